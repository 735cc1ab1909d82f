/*
 * c_reference.c --
 *
 *	The C ceiling for the benchmarks: the same architecture as
 *	socketserver with no Tcl at all. One accepting process passes each
 *	connection over a SOCK_SEQPACKET socketpair (SCM_RIGHTS, via
 *	../ancillary.h) to W forked workers that block in recvmsg(), read the
 *	request, do the scenario's work and answer the same HTTP/1.0 response
 *	as the Tcl servers.
 *
 *	Usage: c_reference WORKERS PORT WORK    (WORK: none, sleep, cpu)
 *	Prints "ready PORT" once listening; stops on SIGTERM (its process
 *	group: the benchmark kills the whole group).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../ancillary.h"

static const char response[] =
    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    "Connection: close\r\n\r\nhello\n";

static void
Work(
    const char *work)
{
    struct timespec start, now;

    if (strcmp(work, "sleep") == 0) {
	struct timespec pause = {0, 20 * 1000000L};

	nanosleep(&pause, NULL);
    } else if (strcmp(work, "cpu") == 0) {
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
	    clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000000000L
		+ (now.tv_nsec - start.tv_nsec) < 2000000L);
    }
}

static void
ServeForever(
    int queue,
    const char *work)
{
    char request[4096], payload[64];
    int fd;

    for (;;) {
	/* Many workers read the queue: take each message in one call. */
	ssize_t got = ancil_take_fd(queue, &fd, payload, sizeof(payload), 0);
	size_t used = 0;

	if (got == 0) {
	    exit(0);
	}
	if (got < 0) {
	    continue;
	}
	while (used < sizeof(request) - 1) {
	    ssize_t n = read(fd, request + used, sizeof(request) - 1 - used);

	    if (n <= 0) {
		break;
	    }
	    used += (size_t) n;
	    request[used] = '\0';
	    if (strstr(request, "\r\n\r\n") != NULL) {
		break;
	    }
	}
	Work(work);
	if (write(fd, response, sizeof(response) - 1) < 0) {
	    perror("c_reference: write");
	}
	close(fd);
    }
}

int
main(
    int argc,
    char **argv)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    int listener, queue[2], workers, i, on = 1;

    if (argc != 4) {
	fprintf(stderr, "usage: c_reference WORKERS PORT none|sleep|cpu\n");
	return 2;
    }
    workers = atoi(argv[1]);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((unsigned short) atoi(argv[2]));
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0
	    || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0
	    || bind(listener, (struct sockaddr *) &addr, sizeof(addr)) < 0
	    || listen(listener, SOMAXCONN) < 0
	    || getsockname(listener, (struct sockaddr *) &addr, &len) < 0
	    || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, queue) < 0) {
	perror("c_reference");
	return 1;
    }
    for (i = 0; i < workers; i++) {
	pid_t pid = fork();

	if (pid < 0) {
	    perror("c_reference: fork");
	    return 1;
	}
	if (pid == 0) {
	    close(listener);
	    close(queue[1]);
	    ServeForever(queue[0], argv[3]);
	}
    }
    close(queue[0]);
    printf("ready %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
	struct sockaddr_storage peer;
	socklen_t peerLen = sizeof(peer);
	int fd = accept(listener, (struct sockaddr *) &peer, &peerLen);

	if (fd < 0) {
	    if (errno != EINTR && errno != ECONNABORTED) {
		perror("c_reference: accept");
	    }
	    continue;
	}
	if (ancil_send_fd(queue[1], fd, &peer, peerLen, 0) < 0) {
	    perror("c_reference: sendmsg");
	}
	close(fd);
    }
}
