/*
 * sdharness.c --
 *
 *	What systemd does for a service, for the tests, with no systemd:
 *
 *	    sdharness activate ADDR PORT COMMAND ?ARG ...?
 *		Listens on ADDR:PORT (PORT 0: any), prints "listening PORT"
 *		on standard output, puts the socket at descriptor 3 and runs
 *		COMMAND with LISTEN_PID (its own pid, which exec keeps),
 *		LISTEN_FDS=1 and LISTEN_FDNAMES=web set, as socket activation
 *		does (sd_listen_fds(3)).
 *	    sdharness notify PATH
 *		Binds a Unix datagram socket at PATH and prints each message
 *		that comes on one line, its newlines written as spaces, until
 *		standard input ends (the test closes it), as systemd's
 *		NOTIFY_SOCKET receives sd_notify(3) messages.
 *	    sdharness deaf PATH
 *		The same socket, never read: a service manager that stopped
 *		reading. Its queue fills, and a sender that waits for room
 *		waits for ever.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int
Activate(
    const char *addr,
    int port,
    char **argv)
{
    struct sockaddr_in sin;
    socklen_t length = sizeof(sin);
    char pid[32];
    int fd, on = 1;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short) port);
    if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
	fprintf(stderr, "sdharness: bad address %s\n", addr);
	return 2;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on,
	    sizeof(on)) < 0 || bind(fd, (struct sockaddr *) &sin,
	    sizeof(sin)) < 0 || listen(fd, SOMAXCONN) < 0
	    || getsockname(fd, (struct sockaddr *) &sin, &length) < 0) {
	perror("sdharness: listen");
	return 2;
    }
    if (fd != 3) {
	if (dup2(fd, 3) < 0) {
	    perror("sdharness: dup2");
	    return 2;
	}
	close(fd);
    }
    printf("listening %d\n", ntohs(sin.sin_port));
    fflush(stdout);
    snprintf(pid, sizeof(pid), "%ld", (long) getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "web", 1);
    execvp(argv[0], argv);
    perror("sdharness: exec");
    return 2;
}

static int
Notify(
    const char *path,
    int deaf)
{
    struct sockaddr_un sun;
    struct pollfd fds[2];
    char buffer[4096];
    int fd;

    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sun.sun_path)) {
	fprintf(stderr, "sdharness: path too long\n");
	return 2;
    }
    strcpy(sun.sun_path, path);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *) &sun, sizeof(sun)) < 0) {
	perror("sdharness: bind");
	return 2;
    }
    printf("bound\n");
    fflush(stdout);
    fds[0].fd = deaf ? -1 : fd;
    fds[0].events = POLLIN;
    fds[1].fd = 0;
    fds[1].events = POLLIN;
    for (;;) {
	ssize_t got, i;

	if (poll(fds, 2, -1) < 0) {
	    if (errno == EINTR) {
		continue;
	    }
	    perror("sdharness: poll");
	    return 2;
	}
	if (fds[0].revents & POLLIN) {
	    got = recv(fd, buffer, sizeof(buffer), 0);
	    if (got < 0) {
		perror("sdharness: recv");
		return 2;
	    }
	    for (i = 0; i < got; i++) {
		putchar(buffer[i] == '\n' ? ' ' : buffer[i]);
	    }
	    putchar('\n');
	    fflush(stdout);
	} else if (fds[1].revents) {
	    unlink(path);
	    return 0;
	}
    }
}

int
main(
    int argc,
    char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "activate") == 0) {
	return Activate(argv[2], atoi(argv[3]), argv + 4);
    }
    if (argc == 3 && strcmp(argv[1], "notify") == 0) {
	return Notify(argv[2], 0);
    }
    if (argc == 3 && strcmp(argv[1], "deaf") == 0) {
	return Notify(argv[2], 1);
    }
    fprintf(stderr, "usage: sdharness activate ADDR PORT COMMAND ?ARG ...?"
	    " | sdharness notify PATH | sdharness deaf PATH\n");
    return 2;
}
