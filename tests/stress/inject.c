/*
 * inject.c --
 *
 *	A test helper, loaded into tclsh by some tests: it reaches
 *	below the public interface to make what no well-behaved process
 *	makes.
 *
 *	    inject::seqpackets		the descriptors of this process that
 *					are Unix SOCK_SEQPACKET sockets
 *	    inject::send fd nfds nbytes	sends one message of nbytes zero
 *					bytes carrying nfds descriptors
 *	    inject::inflight n		keeps n descriptors in flight (unread
 *					in a socket) for this user
 *	    inject::release		frees them
 *	    inject::reset port		connects to 127.0.0.1:port, sends a
 *					line and aborts with a reset (RST)
 *	    inject::fork		a plain fork(), as TclX's: the child
 *					gets 0, the parent the child's pid
 *	    inject::wait pid		waitpid(): reaps the child, returns
 *					its exit status (-1: killed)
 *	    inject::_exit status	_exit(): leaves without Tcl's
 *					finalization (which under Tcl 9 would
 *					touch the epoll set the child shares)
 *
 *	Preloaded instead (LD_PRELOAD), with INJECT_ATFORK_FAIL=NAME in the
 *	environment, it makes pthread_atfork() fail with ENOMEM for the
 *	shared library whose file name contains NAME.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

/* dladdr() and RTLD_NEXT on glibc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <tcl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MAX_FDS_PER_MESSAGE 200	/* Below the kernel's SCM_MAX_FD (253). */

static int heldPair[2] = {-1, -1};	/* inflight: the unread socket. */
static int heldFile = -1;		/* inflight: what is passed. */

/*
 *----------------------------------------------------------------------
 *
 * SendFds --
 *
 *	Sends one message of nbytes zero bytes (at least one, since the
 *	kernel needs data to carry rights on a stream) with count copies of
 *	fd.
 *
 * Results:
 *	0, or -1 and errno.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
SendFds(
    int sock,
    int fd,
    int count,
    size_t nbytes)
{
    char data[512];
    union {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
    } control;
    struct iovec iov;
    struct msghdr msg;
    int i;

    if (nbytes > sizeof(data) || count > MAX_FDS_PER_MESSAGE) {
	errno = EINVAL;
	return -1;
    }
    memset(data, 0, sizeof(data));
    memset(&control, 0, sizeof(control));
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = data;
    iov.iov_len = nbytes;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 0) {
	struct cmsghdr *cmsg;

	msg.msg_control = control.buf;
	msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int) * count);
	for (i = 0; i < count; i++) {
	    memcpy(CMSG_DATA(cmsg) + i * sizeof(int), &fd, sizeof(int));
	}
    }
    return (sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) ? -1 : 0;
}

static int
PosixError(
    Tcl_Interp *interp,
    const char *what)
{
    Tcl_SetObjResult(interp, Tcl_ObjPrintf("%s: %s", what,
	    Tcl_PosixError(interp)));
    return TCL_ERROR;
}

/*
 *----------------------------------------------------------------------
 *
 * SeqpacketsCmd, SendCmd, InflightCmd, ReleaseCmd, ResetCmd --
 *
 *	The commands described at the top of the file.
 *
 *----------------------------------------------------------------------
 */

static int
SeqpacketsCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj *listObj = Tcl_NewListObj(0, NULL);
    struct rlimit limit;
    int fd, max = 1024;

    (void) dummy; (void) objc; (void) objv;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 65536) {
	max = (int) limit.rlim_cur;
    }
    for (fd = 0; fd < max; fd++) {
	int type, domain;
	socklen_t len = sizeof(int);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0
		&& type == SOCK_SEQPACKET
		&& getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0
		&& domain == AF_UNIX) {
	    Tcl_ListObjAppendElement(NULL, listObj, Tcl_NewIntObj(fd));
	}
    }
    Tcl_SetObjResult(interp, listObj);
    return TCL_OK;
}

static int
SendCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int sock, nfds, nbytes, devnull, result;

    (void) dummy;
    if (objc != 4) {
	Tcl_WrongNumArgs(interp, 1, objv, "fd nfds nbytes");
	return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &sock) != TCL_OK
	    || Tcl_GetIntFromObj(interp, objv[2], &nfds) != TCL_OK
	    || Tcl_GetIntFromObj(interp, objv[3], &nbytes) != TCL_OK) {
	return TCL_ERROR;
    }
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) {
	return PosixError(interp, "open /dev/null");
    }
    result = SendFds(sock, devnull, nfds, (size_t) nbytes);
    close(devnull);
    return (result < 0) ? PosixError(interp, "sendmsg") : TCL_OK;
}

static int
InflightCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int n, other[2];

    (void) dummy;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "n");
	return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &n) != TCL_OK) {
	return TCL_ERROR;
    }
    if (heldPair[0] >= 0) {
	Tcl_SetResult(interp, "descriptors already in flight", TCL_STATIC);
	return TCL_ERROR;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, heldPair) < 0) {
	return PosixError(interp, "socketpair");
    }

    /*
     * Pass a Unix socket, which every kernel version counts as in flight,
     * and one that is not part of the pair, so no cycle needs collecting.
     */

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other) < 0) {
	return PosixError(interp, "socketpair");
    }
    close(other[1]);
    heldFile = other[0];
    while (n > 0) {
	int count = (n > MAX_FDS_PER_MESSAGE) ? MAX_FDS_PER_MESSAGE : n;

	if (SendFds(heldPair[1], heldFile, count, 1) < 0) {
	    return PosixError(interp, "sendmsg");
	}
	n -= count;
    }
    return TCL_OK;
}

static int
ReleaseCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    (void) dummy; (void) interp; (void) objc; (void) objv;
    if (heldPair[0] >= 0) {
	close(heldPair[0]);
	close(heldPair[1]);
	close(heldFile);
	heldPair[0] = heldPair[1] = heldFile = -1;
    }
    return TCL_OK;
}

static int
ResetCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    struct sockaddr_in addr;
    struct linger linger = {1, 0};
    int port, fd;

    (void) dummy;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "port");
	return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &port) != TCL_OK) {
	return TCL_ERROR;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
	return PosixError(interp, "socket");
    }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short) port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0
	    || write(fd, "reset\n", 6) != 6
	    || setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger,
		    sizeof(linger)) < 0) {
	int error = errno;

	close(fd);
	errno = error;
	return PosixError(interp, "reset");
    }
    close(fd);
    return TCL_OK;
}

static int
ForkCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    pid_t pid;

    (void) dummy;
    if (objc != 1) {
	Tcl_WrongNumArgs(interp, 1, objv, NULL);
	return TCL_ERROR;
    }
    pid = fork();
    if (pid < 0) {
	return PosixError(interp, "fork");
    }
    Tcl_SetObjResult(interp, Tcl_NewIntObj((int) pid));
    return TCL_OK;
}

static int
WaitCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int pid, status;

    (void) dummy;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "pid");
	return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &pid) != TCL_OK) {
	return TCL_ERROR;
    }
    while (waitpid((pid_t) pid, &status, 0) < 0) {
	if (errno != EINTR) {
	    return PosixError(interp, "waitpid");
	}
    }
    Tcl_SetObjResult(interp, Tcl_NewIntObj(WIFEXITED(status)
	    ? WEXITSTATUS(status) : -1));
    return TCL_OK;
}

static int
ExitCmd(
    ClientData dummy,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int status;

    (void) dummy;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "status");
	return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &status) != TCL_OK) {
	return TCL_ERROR;
    }
    _exit(status);
}

/*
 *----------------------------------------------------------------------
 *
 * __register_atfork --
 *
 *	What glibc's pthread_atfork(), a stub linked into each library,
 *	calls. With INJECT_ATFORK_FAIL=NAME, refuses with ENOMEM the fork
 *	handlers of a library whose file name (the part after the last
 *	slash) contains NAME; passes on everything else.
 *
 * Results:
 *	0, or an errno value.
 *
 * Side effects:
 *	Those of the C library's.
 *
 *----------------------------------------------------------------------
 */

int
__register_atfork(
    void (*prepare)(void),
    void (*parent)(void),
    void (*child)(void),
    void *dsoHandle)
{
    static int (*next)(void (*)(void), void (*)(void), void (*)(void),
	    void *) = NULL;
    const char *name = getenv("INJECT_ATFORK_FAIL");
    Dl_info info;
    void (*handler)(void) = (prepare != NULL) ? prepare
	    : (parent != NULL) ? parent : child;

    if (name != NULL && handler != NULL
	    && dladdr((void *) (uintptr_t) handler, &info) != 0
	    && info.dli_fname != NULL) {
	const char *slash = strrchr(info.dli_fname, '/');

	if (strstr(slash != NULL ? slash + 1 : info.dli_fname, name) != NULL) {
	    return ENOMEM;
	}
    }
    if (next == NULL) {
	next = (int (*)(void (*)(void), void (*)(void), void (*)(void),
		void *)) (uintptr_t) dlsym(RTLD_NEXT, "__register_atfork");
	if (next == NULL) {
	    return ENOSYS;
	}
    }
    return next(prepare, parent, child, dsoHandle);
}

int
Inject_Init(
    Tcl_Interp *interp)
{
    if (Tcl_InitStubs(interp, "8.6-", 0) == NULL) {
	return TCL_ERROR;
    }
    Tcl_CreateObjCommand(interp, "inject::seqpackets", SeqpacketsCmd, NULL,
	    NULL);
    Tcl_CreateObjCommand(interp, "inject::send", SendCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "inject::inflight", InflightCmd, NULL,
	    NULL);
    Tcl_CreateObjCommand(interp, "inject::release", ReleaseCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "inject::reset", ResetCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "inject::fork", ForkCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "inject::_exit", ExitCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "inject::wait", WaitCmd, NULL, NULL);
    return TCL_OK;
}
