/*
 * ancillary.h --
 *
 *	Pass one file descriptor, or none, with a short payload, over a Unix
 *	domain socket (SCM_RIGHTS). Header only: three static inline
 *	functions.
 *
 *	    ancil_send_fd(sock, fd, data, len, flags)
 *	    ancil_recv_fd(sock, &fd, data, len, flags)   one reader
 *	    ancil_take_fd(sock, &fd, data, len, flags)   many readers
 *
 *	All return -1 and set errno on failure, retry on EINTR, and never
 *	leave a descriptor behind that the caller does not know about. With
 *	ancil_recv_fd, a receiver with no room for the descriptor (EMFILE)
 *	leaves the message queued rather than lose it.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

#ifndef ANCILLARY_H
#define ANCILLARY_H

#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <fcntl.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/*
 * Room for one descriptor, aligned as the kernel wants a cmsghdr. A sender
 * that packs more into one message makes the kernel truncate the control
 * data: MSG_CTRUNC tells us so and the message is refused. MSG_CTRUNC with
 * no descriptor at all means the receiver had no room for one.
 */

typedef union {
    struct cmsghdr align;	/* Forces cmsghdr alignment. */
    char buf[CMSG_SPACE(sizeof(int))];
				/* Space for exactly one descriptor. */
} AncilControl;

/*
 *----------------------------------------------------------------------
 *
 * ancil_collect_fds --
 *
 *	Goes through the control data of a received message: the first
 *	descriptor goes to *fd, any further ones are closed.
 *
 * Results:
 *	How many descriptors the message carried.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static inline int
ancil_collect_fds(
    struct msghdr *msg,
    int *fd)
{
    struct cmsghdr *cmsg;
    int count = 0;

    for (cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL;
	    cmsg = CMSG_NXTHDR(msg, cmsg)) {
	int *fds = (int *) CMSG_DATA(cmsg);
	size_t i, n;

	if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
	    continue;
	}
	n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
	for (i = 0; i < n; i++) {
	    int one;

	    memcpy(&one, fds + i, sizeof(int));
	    if (count++ == 0) {
		*fd = one;
	    } else {
		close(one);
	    }
	}
    }
    return count;
}

/*
 *----------------------------------------------------------------------
 *
 * ancil_send_fd --
 *
 *	ancil_send_fd(sock, fd, data, len, flags): send descriptor fd (none
 *	if fd is -1) and len bytes of data (len >= 1) as one message on
 *	sock. flags are
 *	added to sendmsg()'s (MSG_DONTWAIT, say); MSG_NOSIGNAL is always
 *	set, so a closed peer is EPIPE, never SIGPIPE.
 *
 * Results:
 *	0 once the message is queued; -1 and errno otherwise (EAGAIN when
 *	the socket is full and MSG_DONTWAIT was given, ETOOMANYREFS at the
 *	kernel's limit of descriptors in flight).
 *
 * Side effects:
 *	The receiver gets its own copy of fd; the caller's stays open.
 *
 *----------------------------------------------------------------------
 */

static inline int
ancil_send_fd(
    int sock,
    int fd,
    const void *data,
    size_t len,
    int flags)
{
    AncilControl control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t sent;

    memset(&control, 0, sizeof(control));
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = (void *) data;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
	msg.msg_control = control.buf;
	msg.msg_controllen = CMSG_SPACE(sizeof(int));
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }

    do {
	sent = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
	return -1;
    }
    if ((size_t) sent != len) {
	/* Cannot happen on a message-preserving socket; never half-send. */
	errno = EMSGSIZE;
	return -1;
    }
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * ancil_receive --
 *
 *	The receive behind ancil_recv_fd and ancil_take_fd: one message
 *	from sock into data (at most len bytes) and the descriptor it
 *	carries, if any, into *fd, close-on-exec. With peekFirst, the message is
 *	looked at (MSG_PEEK, which installs copies of its descriptors and
 *	leaves it queued) and then taken without its descriptors, so that a
 *	descriptor the process has no room for stays queued; without, it is
 *	taken in a single recvmsg().
 *
 * Results:
 *	As ancil_recv_fd.
 *
 * Side effects:
 *	Every descriptor of a discarded message is closed.
 *
 *----------------------------------------------------------------------
 */

static inline ssize_t
ancil_receive(
    int sock,
    int *fd,
    void *data,
    size_t len,
    int flags,
    int peekFirst)
{
    AncilControl control;
    struct iovec iov;
    struct msghdr msg;
    ssize_t got, taken;
    int count, msgFlags;

    *fd = -1;
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = data;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
#ifdef MSG_CMSG_CLOEXEC
    flags |= MSG_CMSG_CLOEXEC;
#endif
    do {
	got = recvmsg(sock, &msg, flags | (peekFirst ? MSG_PEEK : 0));
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
	return -1;
    }
    count = ancil_collect_fds(&msg, fd);
    msgFlags = msg.msg_flags;
    if (got == 0 && count == 0 && !(msgFlags & MSG_CTRUNC)) {
	/* End of file, or an empty message: a peeked one is taken too. */
	while (peekFirst && recv(sock, data, len, MSG_DONTWAIT) < 0
		&& errno == EINTR) {
	}
	return 0;
    }
    if (count == 0 && (msgFlags & MSG_CTRUNC)) {
	/* The kernel could not install even one descriptor: no room. */
	errno = EMFILE;
	return -1;
    }

    taken = got;
    if (peekFirst) {
	/*
	 * Take the message without its descriptors: the kernel drops its
	 * own references, the copies installed above stay.
	 */

	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	do {
	    taken = recvmsg(sock, &msg, flags | MSG_DONTWAIT);
	} while (taken < 0 && errno == EINTR);
    }
    if (taken != got || count > 1 || got == 0
	    || (msgFlags & (MSG_CTRUNC | MSG_TRUNC))) {
	if (*fd >= 0) {
	    close(*fd);
	    *fd = -1;
	}
	errno = EBADMSG;
	return -1;
    }
#ifndef MSG_CMSG_CLOEXEC
    if (*fd >= 0) {
	fcntl(*fd, F_SETFD, FD_CLOEXEC);
    }
#endif
    return got;
}

/*
 *----------------------------------------------------------------------
 *
 * ancil_recv_fd --
 *
 *	ancil_recv_fd(sock, &fd, data, len, flags): receive one message
 *	from sock into data (at most len bytes) and the descriptor it
 *	carries into *fd (-1 if none), close-on-exec. flags are added to
 *	recvmsg()'s.
 *	The message is looked at (MSG_PEEK) before it is taken, so that a
 *	descriptor the process has no room for is never lost: the message
 *	stays queued instead. One reader per socket at a time.
 *
 * Results:
 *	The payload's length (>= 1) with *fd set (-1 for a message that
 *	carries no descriptor); 0 with *fd == -1 at end
 *	of file (the sending end is closed everywhere) or after taking an
 *	empty message, which no sender here makes; -1 and errno
 *	otherwise. EMFILE means the descriptor could not be installed and
 *	the message is still queued. EBADMSG means a malformed message was
 *	consumed and discarded: more than one descriptor, or a payload
 *	longer than len. The caller checks the payload's length itself.
 *
 * Side effects:
 *	Every descriptor of a discarded message is closed.
 *
 *----------------------------------------------------------------------
 */

static inline ssize_t
ancil_recv_fd(
    int sock,
    int *fd,
    void *data,
    size_t len,
    int flags)
{
    return ancil_receive(sock, fd, data, len, flags, 1);
}

/*
 *----------------------------------------------------------------------
 *
 * ancil_take_fd --
 *
 *	ancil_take_fd(sock, &fd, data, len, flags): as ancil_recv_fd, but
 *	in a single recvmsg(), for a socket that several processes read (a
 *	peek and then a take could take another reader's message). The
 *	caller makes sure it has room for a descriptor: one the kernel
 *	cannot install is lost.
 *
 * Results:
 *	As ancil_recv_fd, except that EMFILE means the message was taken
 *	and its descriptor lost.
 *
 * Side effects:
 *	Every descriptor of a discarded message is closed.
 *
 *----------------------------------------------------------------------
 */

static inline ssize_t
ancil_take_fd(
    int sock,
    int *fd,
    void *data,
    size_t len,
    int flags)
{
    return ancil_receive(sock, fd, data, len, flags, 0);
}

#endif /* ANCILLARY_H */
