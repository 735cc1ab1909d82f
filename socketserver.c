/*
 * socketserver.c --
 *
 *	A pre-forked TCP server for Tcl. One process listens on a port and a
 *	background thread accepts connections; each accepted connection is
 *	passed, with its peer's address, over a SOCK_SEQPACKET socketpair
 *	(the "queue") that the serving process shares with every process
 *	forked from it. A process that wants a connection asks for one; when
 *	the queue holds one, the event loop takes it and calls the Tcl
 *	handler with a real Tcl TCP channel.
 *
 *	One connection, start to end:
 *	    AcceptConnections (accept thread)  accept()s it into heldFd,
 *	    QueueHeldConnection               sendmsg()s it onto the queue,
 *	    ReceiveConnection (event loop)    recvmsg()s it in a requester,
 *	    DeliverConnection                 wraps it and calls the handler.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

/* accept4(), F_DUPFD_CLOEXEC and MSG_CMSG_CLOEXEC on glibc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <tcl.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <unistd.h>

#include "ancillary.h"

#define PACKAGE_NAME	"socketserver"
#define PACKAGE_VERSION	"2.0"

/*
 * What travels on the queue with each connection: the peer's address as
 * accept() returned it. A message of any other size or magic is discarded.
 */

#define PAYLOAD_MAGIC	0x53535632u	/* "SSV2" */

typedef struct Payload {
    uint32_t magic;		/* PAYLOAD_MAGIC. */
    uint32_t addrLen;		/* Bytes of addr that accept() filled in. */
    struct sockaddr_storage addr;
				/* The peer's address. */
} Payload;

/*
 * Listening states of a queue in this process.
 */

#define NOT_LISTENING	0	/* No listener, no accept thread. */
#define LISTENING	1	/* Listener open, accept thread running. */
#define STOPPING	2	/* 'close' is joining the accept thread. */

/*
 * One queue per port, process-wide, never freed: workers forked earlier
 * keep using it across 'close' and a later 'server' on the same port.
 *
 * queueLock guards the list and every field marked (L). The accept thread
 * reads listenFd, sendFd and wakeFds without the lock: they are set before
 * it starts and changed only after it is joined. heldFd is written only
 * by the accept thread while it runs, always under the lock, so that a
 * fork (whose prepare handler takes the lock) never copies a connection
 * it does not know about.
 */

typedef struct Queue {
    struct Queue *nextPtr;	/* Next queue of the process. (L) */
    int port;			/* Port number; fixed. */
    int recvFd;			/* Receiving end of the queue; every
				 * process that knows the queue has it. */
    int sendFd;			/* Sending end; -1 in forked children. (L) */
    int listenFd;		/* Listening socket or -1. (L) */
    int wakeFds[2];		/* Pipe whose read end, when readable, tells
				 * the accept thread to stop. (L) */
    int state;			/* NOT_LISTENING, LISTENING or STOPPING. (L) */
    pthread_t thread;		/* The accept thread, when state isn't
				 * NOT_LISTENING. */
    char myaddr[NI_MAXHOST];	/* Numeric address last listened on. (L) */
    int heldFd;			/* Accepted connection not queued yet, or
				 * -1. (L) */
    Payload held;		/* Its peer's address. */
    long accepted;		/* Connections this process accepted. (L) */
    long received;		/* Connections this process took. (L) */
    int lastErrno;		/* Last error the accept thread met, or 0.
				 * (L) */
} Queue;

/*
 * A pending request: one interpreter waits for one connection from one
 * queue. It watches a private duplicate of the queue's receiving end, so
 * that several interpreters in one thread each get their own file handler,
 * and watches it only while the request is pending.
 */

typedef struct Request {
    struct Request *nextPtr;	/* Next request of the same interpreter. */
    struct InterpData *dataPtr;	/* The interpreter that asked. */
    Queue *queuePtr;		/* The queue asked from. */
    int watchFd;		/* Duplicate of queuePtr->recvFd, watched
				 * with Tcl_CreateFileHandler. */
    Tcl_Obj *handlerObj;	/* Command prefix to call; one reference. */
    unsigned long generation;	/* forkGeneration when made: a request
				 * copied into a forked child is stale. */
} Request;

/*
 * Per interpreter: its pending requests. Touched only in the thread of
 * the interpreter.
 */

typedef struct InterpData {
    Tcl_Interp *interp;		/* The interpreter. */
    Request *firstRequestPtr;	/* Its pending requests. */
} InterpData;

static pthread_mutex_t queueLock = PTHREAD_MUTEX_INITIALIZER;
static Queue *firstQueuePtr = NULL;	/* Queues of this process. (L) */
static int defaultPort = -1;		/* Port of the first server. (L) */
static unsigned long forkGeneration = 0;/* Counts forks; changed only in
					 * the child of a fork. */
static pthread_once_t setupOnce = PTHREAD_ONCE_INIT;

#define ASSOC_KEY	"socketserver"
#define PAUSE_MS	100	/* Pause after a resource shortage. */
#define RETRY_MS	10	/* Retry after the queue refused a send. */

/*
 * Static routines for this file:
 */

static void		AtForkChild(void);
static void		AtForkParent(void);
static void		AtForkPrepare(void);
static void *		AcceptConnections(void *clientData);
static int		AcceptOneConnection(Queue *queuePtr);
static int		CancelCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		ClientCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		CloseCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static void		CloseFd(int *fdPtr);
static void		DeleteInterpData(ClientData clientData,
			    Tcl_Interp *interp);
static void		DeliverConnection(Tcl_Interp *interp,
			    Tcl_Obj *handlerObj, Queue *queuePtr, int fd,
			    const Payload *payloadPtr);
static void		DropRequest(Request *requestPtr);
static Request *	FindRequest(InterpData *dataPtr, Queue *queuePtr);
static Queue *		FindQueue(int port);
static void		FinalizeServers(ClientData clientData);
static int		InfoCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		LookupQueue(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[], int first,
			    Queue **queuePtrPtr);
static int		OpenListener(Tcl_Interp *interp, const char *myaddr,
			    int port, int backlog, int *fdPtr,
			    int *boundPortPtr, char *boundAddr);
static int		ParsePort(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int *portPtr);
static int		QueueHeldConnection(Queue *queuePtr);
static void		ReceiveConnection(ClientData clientData, int mask);
static void		RefuseRequest(Tcl_Interp *interp, Request *requestPtr,
			    Tcl_Obj *messageObj, const char *code);
static void		SetPortErrorCode(Tcl_Interp *interp,
			    const char *code, int port);
static int		ServerCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static void		SetupProcess(void);
static int		SocketserverObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		StartAccepting(Tcl_Interp *interp, Queue *queuePtr,
			    int listenFd);
static void		StopAccepting(Queue *queuePtr);
static int		WaitFor(Queue *queuePtr, int fd, short events,
			    int timeoutMs);

DLLEXPORT int		Socketserver_Init(Tcl_Interp *interp);
DLLEXPORT int		Socketserver_SafeInit(Tcl_Interp *interp);

/*
 *----------------------------------------------------------------------
 *
 * CloseFd --
 *
 *	Closes *fdPtr if it is open and marks it closed.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	*fdPtr becomes -1. A close() error leaves nothing to recover: the
 *	descriptor is released either way on the systems we support.
 *
 *----------------------------------------------------------------------
 */

static void
CloseFd(
    int *fdPtr)
{
    if (*fdPtr >= 0) {
	close(*fdPtr);
	*fdPtr = -1;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * SetupProcess --
 *
 *	Runs once per process: installs the fork handlers and the exit
 *	handler.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static void
SetupProcess(void)
{
    pthread_atfork(AtForkPrepare, AtForkParent, AtForkChild);
    Tcl_CreateExitHandler(FinalizeServers, NULL);
}

/*
 *----------------------------------------------------------------------
 *
 * AtForkPrepare, AtForkParent, AtForkChild --
 *
 *	Keep fork() from copying half-made state. The prepare handler takes
 *	queueLock, so no accept thread is between accept() and recording the
 *	new descriptor. The child, which has no accept thread, closes what
 *	belongs to the serving process alone: listeners, the queues' sending
 *	ends, the stop pipes and any connection accepted but not queued.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	In the child: counters start at 0, every request copied from the
 *	parent becomes stale (forkGeneration), and the queue's sending end
 *	lives only in the serving process, so workers see end of file on
 *	the queue once it exits.
 *
 *----------------------------------------------------------------------
 */

static void
AtForkPrepare(void)
{
    pthread_mutex_lock(&queueLock);
}

static void
AtForkParent(void)
{
    pthread_mutex_unlock(&queueLock);
}

static void
AtForkChild(void)
{
    Queue *queuePtr;

    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	CloseFd(&queuePtr->listenFd);
	CloseFd(&queuePtr->sendFd);
	CloseFd(&queuePtr->wakeFds[0]);
	CloseFd(&queuePtr->wakeFds[1]);
	CloseFd(&queuePtr->heldFd);
	queuePtr->state = NOT_LISTENING;
	queuePtr->accepted = 0;
	queuePtr->received = 0;
	queuePtr->lastErrno = 0;
    }
    forkGeneration++;
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * FinalizeServers --
 *
 *	Exit handler: stops every accept thread of this process so that
 *	exit never races a running thread.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Listeners are closed; queued connections stay with the workers.
 *
 *----------------------------------------------------------------------
 */

static void
FinalizeServers(
    ClientData clientData)
{
    Queue *queuePtr;

    (void) clientData;
    pthread_mutex_lock(&queueLock);
    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	if (queuePtr->state == LISTENING) {
	    queuePtr->state = STOPPING;
	    pthread_mutex_unlock(&queueLock);
	    StopAccepting(queuePtr);
	    pthread_mutex_lock(&queueLock);
	}
    }
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * FindQueue --
 *
 *	Looks up the queue of a port. The caller holds queueLock.
 *
 * Results:
 *	The queue, or NULL if this process knows none for port.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static Queue *
FindQueue(
    int port)
{
    Queue *queuePtr;

    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	if (queuePtr->port == port) {
	    return queuePtr;
	}
    }
    return NULL;
}

/*
 *----------------------------------------------------------------------
 *
 * WaitFor --
 *
 *	Accept thread: waits until fd has one of events (fd may be -1 to
 *	just wait), timeoutMs passes (-1: no limit), or the thread is told
 *	to stop.
 *
 * Results:
 *	0 if the thread must stop, 1 otherwise.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
WaitFor(
    Queue *queuePtr,
    int fd,
    short events,
    int timeoutMs)
{
    struct pollfd fds[2];

    fds[0].fd = queuePtr->wakeFds[0];
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    fds[1].fd = fd;
    fds[1].events = events;
    fds[1].revents = 0;
    if (poll(fds, 2, timeoutMs) < 0 && errno != EINTR) {
	/*
	 * Only ENOMEM is possible here: pause rather than spin.
	 */

	struct timespec pause = {0, PAUSE_MS * 1000000L};

	nanosleep(&pause, NULL);
    }
    return (fds[0].revents == 0);
}

/*
 *----------------------------------------------------------------------
 *
 * AcceptConnections --
 *
 *	The accept thread of one queue: accepts connections and queues them,
 *	one at a time, until told to stop. It never touches Tcl.
 *
 * Results:
 *	NULL.
 *
 * Side effects:
 *	A connection it accepted but could not queue yet stays in heldFd
 *	when it stops, to be queued first when accepting resumes.
 *
 *----------------------------------------------------------------------
 */

static void *
AcceptConnections(
    void *clientData)
{
    Queue *queuePtr = clientData;

    for (;;) {
	if (queuePtr->heldFd < 0) {
	    if (!WaitFor(queuePtr, queuePtr->listenFd, POLLIN, -1)) {
		break;
	    }
	    if (!AcceptOneConnection(queuePtr)) {
		continue;
	    }
	}
	if (!QueueHeldConnection(queuePtr)) {
	    break;
	}
    }
    return NULL;
}

/*
 *----------------------------------------------------------------------
 *
 * AcceptOneConnection --
 *
 *	Accept thread: accepts one connection from the (non-blocking)
 *	listener into heldFd, close-on-exec.
 *
 * Results:
 *	1 if a connection is now held, 0 if none was (nothing waiting, an
 *	aborted connection, or a shortage of descriptors or memory, after
 *	which it pauses instead of spinning).
 *
 * Side effects:
 *	Counts the connection in 'accepted'; records errors in lastErrno.
 *
 *----------------------------------------------------------------------
 */

static int
AcceptOneConnection(
    Queue *queuePtr)
{
    Payload payload;
    socklen_t addrLen = sizeof(payload.addr);
    int fd, error = 0;

    memset(&payload, 0, sizeof(payload));
    pthread_mutex_lock(&queueLock);
#ifdef SOCK_CLOEXEC
    fd = accept4(queuePtr->listenFd, (struct sockaddr *) &payload.addr,
	    &addrLen, SOCK_CLOEXEC);
#else
    fd = accept(queuePtr->listenFd, (struct sockaddr *) &payload.addr,
	    &addrLen);
    if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
	error = errno;
	CloseFd(&fd);
	errno = error;
    }
#endif
    if (fd >= 0) {
	payload.magic = PAYLOAD_MAGIC;
	payload.addrLen = addrLen;
	queuePtr->held = payload;
	queuePtr->heldFd = fd;
	queuePtr->accepted++;
    } else {
	error = errno;
	if (error != EAGAIN && error != EWOULDBLOCK && error != EINTR) {
	    queuePtr->lastErrno = error;
	}
    }
    pthread_mutex_unlock(&queueLock);

    switch (error) {
    case 0:
	return 1;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case EINTR:
    case ECONNABORTED:
#ifdef EPROTO
    case EPROTO:
#endif
	return 0;
    default:
	/* EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unexpected. */
	WaitFor(queuePtr, -1, 0, PAUSE_MS);
	return 0;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * QueueHeldConnection --
 *
 *	Accept thread: puts the held connection on the queue, waiting
 *	while the queue is full (no worker reading, or the kernel's limit
 *	of descriptors in flight). Never drops the connection.
 *
 * Results:
 *	1 once queued, 0 if told to stop first (the connection stays held).
 *
 * Side effects:
 *	Closes this process's copy of the connection once queued.
 *
 *----------------------------------------------------------------------
 */

static int
QueueHeldConnection(
    Queue *queuePtr)
{
    for (;;) {
	int error, ok;

	if (ancil_send_fd(queuePtr->sendFd, queuePtr->heldFd,
		&queuePtr->held, sizeof(Payload), MSG_DONTWAIT) == 0) {
	    pthread_mutex_lock(&queueLock);
	    CloseFd(&queuePtr->heldFd);
	    pthread_mutex_unlock(&queueLock);
	    return 1;
	}
	error = errno;
	pthread_mutex_lock(&queueLock);
	queuePtr->lastErrno = error;
	pthread_mutex_unlock(&queueLock);
	if (error == EAGAIN || error == EWOULDBLOCK) {
	    ok = WaitFor(queuePtr, queuePtr->sendFd, POLLOUT, PAUSE_MS);
	} else {
	    /* ETOOMANYREFS, ENOBUFS, ENOMEM: poll() can't tell when. */
	    ok = WaitFor(queuePtr, -1, 0, RETRY_MS);
	}
	if (!ok) {
	    return 0;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * StartAccepting --
 *
 *	Hands listenFd to a new accept thread for queuePtr. The caller
 *	has set queuePtr->state to LISTENING.
 *
 * Results:
 *	TCL_OK, or TCL_ERROR with a message in interp.
 *
 * Side effects:
 *	On error listenFd is closed and the state is back to
 *	NOT_LISTENING.
 *
 *----------------------------------------------------------------------
 */

static int
StartAccepting(
    Tcl_Interp *interp,
    Queue *queuePtr,
    int listenFd)
{
    int wakeFds[2], error;
    sigset_t all, old;

    if (pipe(wakeFds) < 0) {
	error = errno;
	goto failed;
    }
    if (fcntl(wakeFds[0], F_SETFD, FD_CLOEXEC) < 0
	    || fcntl(wakeFds[1], F_SETFD, FD_CLOEXEC) < 0
	    || fcntl(listenFd, F_SETFL, O_NONBLOCK) < 0) {
	error = errno;
	CloseFd(&wakeFds[0]);
	CloseFd(&wakeFds[1]);
	goto failed;
    }

    pthread_mutex_lock(&queueLock);
    queuePtr->listenFd = listenFd;
    queuePtr->wakeFds[0] = wakeFds[0];
    queuePtr->wakeFds[1] = wakeFds[1];
    pthread_mutex_unlock(&queueLock);

    /*
     * The thread blocks every signal, so that signals (TclX 'signal trap')
     * reach the interpreters' threads.
     */

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    error = pthread_create(&queuePtr->thread, NULL, AcceptConnections,
	    queuePtr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (error == 0) {
	return TCL_OK;
    }

    pthread_mutex_lock(&queueLock);
    CloseFd(&queuePtr->wakeFds[0]);
    CloseFd(&queuePtr->wakeFds[1]);
    queuePtr->listenFd = -1;
    pthread_mutex_unlock(&queueLock);

  failed:
    close(listenFd);
    pthread_mutex_lock(&queueLock);
    queuePtr->state = NOT_LISTENING;
    pthread_mutex_unlock(&queueLock);
    errno = error;
    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
	    "couldn't start accepting on port %d: %s", queuePtr->port,
	    Tcl_PosixError(interp)));
    return TCL_ERROR;
}

/*
 *----------------------------------------------------------------------
 *
 * StopAccepting --
 *
 *	Stops and joins the accept thread of queuePtr, then closes its
 *	listener. The caller has set the state to STOPPING.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	New connections are refused. A connection accepted but not yet
 *	queued is queued now if the queue has room, or else stays held and
 *	goes first when accepting resumes.
 *
 *----------------------------------------------------------------------
 */

static void
StopAccepting(
    Queue *queuePtr)
{
    ssize_t written;

    do {
	written = write(queuePtr->wakeFds[1], "x", 1);
    } while (written < 0 && errno == EINTR);
    /* A new, empty pipe always takes one byte. */
    pthread_join(queuePtr->thread, NULL);

    pthread_mutex_lock(&queueLock);
    CloseFd(&queuePtr->listenFd);
    CloseFd(&queuePtr->wakeFds[0]);
    CloseFd(&queuePtr->wakeFds[1]);
    if (queuePtr->heldFd >= 0 && ancil_send_fd(queuePtr->sendFd,
	    queuePtr->heldFd, &queuePtr->held, sizeof(Payload),
	    MSG_DONTWAIT) == 0) {
	CloseFd(&queuePtr->heldFd);
    }
    queuePtr->state = NOT_LISTENING;
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * ParsePort --
 *
 *	Reads a port number, 0 to 65535.
 *
 * Results:
 *	TCL_OK with *portPtr set, or TCL_ERROR with a message and
 *	-errorcode {TCL VALUE PORT} in interp.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ParsePort(
    Tcl_Interp *interp,
    Tcl_Obj *objPtr,
    int *portPtr)
{
    int port;

    if (Tcl_GetIntFromObj(NULL, objPtr, &port) != TCL_OK
	    || port < 0 || port > 65535) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"expected port number from 0 to 65535 but got \"%s\"",
		Tcl_GetString(objPtr)));
	Tcl_SetErrorCode(interp, "TCL", "VALUE", "PORT", NULL);
	return TCL_ERROR;
    }
    *portPtr = port;
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * SetPortErrorCode --
 *
 *	Sets -errorcode {SOCKETSERVER code port}.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static void
SetPortErrorCode(
    Tcl_Interp *interp,
    const char *code,
    int port)
{
    char portText[TCL_INTEGER_SPACE];

    snprintf(portText, sizeof(portText), "%d", port);
    Tcl_SetErrorCode(interp, "SOCKETSERVER", code, portText, NULL);
}

/*
 *----------------------------------------------------------------------
 *
 * OpenListener --
 *
 *	Opens a listening TCP socket on myaddr (a name or a literal,
 *	resolved with getaddrinfo) and port, in the calling thread.
 *
 * Results:
 *	TCL_OK with the socket (close-on-exec) in *fdPtr, the port bound in
 *	*boundPortPtr and the numeric address in boundAddr (NI_MAXHOST
 *	bytes); or TCL_ERROR with a message and -errorcode in interp.
 *
 * Side effects:
 *	None on error.
 *
 *----------------------------------------------------------------------
 */

static int
OpenListener(
    Tcl_Interp *interp,
    const char *myaddr,
    int port,
    int backlog,
    int *fdPtr,
    int *boundPortPtr,
    char *boundAddr)
{
    struct addrinfo hints, *addrs, *ai;
    struct sockaddr_storage bound;
    socklen_t boundLen = sizeof(bound);
    char portText[16], service[NI_MAXSERV];
    int fd = -1, error = 0, status, on = 1;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portText, sizeof(portText), "%d", port);
    status = getaddrinfo(myaddr, portText, &hints, &addrs);
    if (status != 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't resolve address \"%s\": %s", myaddr,
		gai_strerror(status)));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "RESOLVE", myaddr, NULL);
	return TCL_ERROR;
    }

    for (ai = addrs; ai != NULL; ai = ai->ai_next) {
	fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
	if (fd < 0) {
	    error = errno;
	    continue;
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) == 0
		&& setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on,
			sizeof(on)) == 0
		&& bind(fd, ai->ai_addr, ai->ai_addrlen) == 0
		&& listen(fd, backlog) == 0
		&& getsockname(fd, (struct sockaddr *) &bound,
			&boundLen) == 0) {
	    break;
	}
	error = errno;
	CloseFd(&fd);
    }
    freeaddrinfo(addrs);

    if (fd < 0) {
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: %s", port,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    status = getnameinfo((struct sockaddr *) &bound, boundLen, boundAddr,
	    NI_MAXHOST, service, sizeof(service),
	    NI_NUMERICHOST | NI_NUMERICSERV);
    if (status != 0) {
	close(fd);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't read the address of the socket on port %d: %s",
		port, gai_strerror(status)));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "RESOLVE", myaddr, NULL);
	return TCL_ERROR;
    }
    *fdPtr = fd;
    *boundPortPtr = atoi(service);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * ServerCmd --
 *
 *	$cmd server ?-myaddr addr? ?-backlog n? port
 *	Listens on port and starts the accept thread, creating the port's
 *	queue or resuming into the one this process already has.
 *
 * Results:
 *	TCL_OK with the bound port as result, or TCL_ERROR.
 *
 * Side effects:
 *	The first server of the process becomes the default for 'client'.
 *
 *----------------------------------------------------------------------
 */

static int
ServerCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const options[] = {"-backlog", "-myaddr", NULL};
    enum options { OPT_BACKLOG, OPT_MYADDR };
    const char *myaddr = "0.0.0.0";
    char boundAddr[NI_MAXHOST];
    int backlog = SOMAXCONN, port, boundPort, listenFd, i, index;
    int queueFds[2];
    Queue *queuePtr;

    if (objc < 3 || (objc - 3) % 2 != 0) {
	Tcl_WrongNumArgs(interp, 2, objv, "?-myaddr addr? ?-backlog n? port");
	return TCL_ERROR;
    }
    for (i = 2; i < objc - 1; i += 2) {
	if (Tcl_GetIndexFromObj(interp, objv[i], options, "option", 0,
		&index) != TCL_OK) {
	    return TCL_ERROR;
	}
	switch ((enum options) index) {
	case OPT_BACKLOG:
	    if (Tcl_GetIntFromObj(NULL, objv[i+1], &backlog) != TCL_OK
		    || backlog < 1) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected positive integer backlog but got \"%s\"",
			Tcl_GetString(objv[i+1])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "BACKLOG", NULL);
		return TCL_ERROR;
	    }
	    break;
	case OPT_MYADDR:
	    myaddr = Tcl_GetString(objv[i+1]);
	    break;
	}
    }
    if (ParsePort(interp, objv[objc-1], &port) != TCL_OK) {
	return TCL_ERROR;
    }

    pthread_mutex_lock(&queueLock);
    queuePtr = (port != 0) ? FindQueue(port) : NULL;
    if (queuePtr != NULL && queuePtr->state != NOT_LISTENING) {
	pthread_mutex_unlock(&queueLock);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process is already "
		"listening on it", port));
	SetPortErrorCode(interp, "BUSY", port);
	return TCL_ERROR;
    }
    pthread_mutex_unlock(&queueLock);

    if (OpenListener(interp, myaddr, port, backlog, &listenFd, &boundPort,
	    boundAddr) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * Find or make the queue of the bound port, and claim it.
     */

    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(boundPort);
    if (queuePtr != NULL && queuePtr->state != NOT_LISTENING) {
	pthread_mutex_unlock(&queueLock);
	close(listenFd);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process is already "
		"listening on it", boundPort));
	SetPortErrorCode(interp, "BUSY", boundPort);
	return TCL_ERROR;
    }
    if (queuePtr != NULL && queuePtr->sendFd < 0) {
	pthread_mutex_unlock(&queueLock);
	close(listenFd);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process inherited "
		"that port's queue from the process that serves it",
		boundPort));
	SetPortErrorCode(interp, "INHERITED", boundPort);
	return TCL_ERROR;
    }
    if (queuePtr == NULL) {
	pthread_mutex_unlock(&queueLock);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, queueFds) < 0) {
	    close(listenFd);
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't create the queue for port %d (a SOCK_SEQPACKET "
		    "socketpair): %s", boundPort, Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	if (fcntl(queueFds[0], F_SETFD, FD_CLOEXEC) < 0
		|| fcntl(queueFds[1], F_SETFD, FD_CLOEXEC) < 0) {
	    close(listenFd);
	    close(queueFds[0]);
	    close(queueFds[1]);
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't create the queue for port %d: %s", boundPort,
		    Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	queuePtr = (Queue *) ckalloc(sizeof(Queue));
	memset(queuePtr, 0, sizeof(Queue));
	queuePtr->port = boundPort;
	queuePtr->recvFd = queueFds[0];
	queuePtr->sendFd = queueFds[1];
	queuePtr->listenFd = -1;
	queuePtr->wakeFds[0] = queuePtr->wakeFds[1] = -1;
	queuePtr->heldFd = -1;
	queuePtr->state = NOT_LISTENING;

	pthread_mutex_lock(&queueLock);
	if (firstQueuePtr == NULL) {
	    firstQueuePtr = queuePtr;
	} else {
	    Queue *lastPtr = firstQueuePtr;

	    while (lastPtr->nextPtr != NULL) {
		lastPtr = lastPtr->nextPtr;
	    }
	    lastPtr->nextPtr = queuePtr;
	}
	if (defaultPort < 0) {
	    defaultPort = boundPort;
	}
    }
    queuePtr->state = LISTENING;
    memcpy(queuePtr->myaddr, boundAddr, sizeof(queuePtr->myaddr));
    pthread_mutex_unlock(&queueLock);

    if (StartAccepting(interp, queuePtr, listenFd) != TCL_OK) {
	return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewIntObj(boundPort));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * LookupQueue --
 *
 *	Finds the queue named by "?-port port?" in objv[first..objc-1], or
 *	the default queue when there is no -port.
 *
 * Results:
 *	TCL_OK with *queuePtrPtr set, or TCL_ERROR with a message and
 *	-errorcode in interp ({SOCKETSERVER NOSERVER port}).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
LookupQueue(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[],
    int first,
    Queue **queuePtrPtr)
{
    static const char *const options[] = {"-port", NULL};
    int port = -1, index;
    Queue *queuePtr;

    if (first < objc) {
	if (Tcl_GetIndexFromObj(interp, objv[first], options, "option", 0,
		&index) != TCL_OK
		|| ParsePort(interp, objv[first+1], &port) != TCL_OK) {
	    return TCL_ERROR;
	}
    }

    pthread_mutex_lock(&queueLock);
    if (first >= objc) {
	port = defaultPort;
    }
    queuePtr = FindQueue(port);
    pthread_mutex_unlock(&queueLock);

    if (queuePtr == NULL) {
	if (first < objc) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "no server on port %d in this process", port));
	    SetPortErrorCode(interp, "NOSERVER", port);
	} else {
	    Tcl_SetObjResult(interp, Tcl_NewStringObj(
		    "no server in this process: call \"server\" first, "
		    "or fork from a process that did", -1));
	    Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOSERVER", "", NULL);
	}
	return TCL_ERROR;
    }
    *queuePtrPtr = queuePtr;
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * FindRequest --
 *
 *	Looks up the interpreter's pending request on a queue, dropping
 *	any request copied from the parent of a fork on the way.
 *
 * Results:
 *	The request or NULL.
 *
 * Side effects:
 *	Stale requests are freed.
 *
 *----------------------------------------------------------------------
 */

static Request *
FindRequest(
    InterpData *dataPtr,
    Queue *queuePtr)
{
    Request *requestPtr, *nextPtr, *foundPtr = NULL;

    for (requestPtr = dataPtr->firstRequestPtr; requestPtr != NULL;
	    requestPtr = nextPtr) {
	nextPtr = requestPtr->nextPtr;
	if (requestPtr->generation != forkGeneration) {
	    DropRequest(requestPtr);
	} else if (requestPtr->queuePtr == queuePtr) {
	    foundPtr = requestPtr;
	}
    }
    return foundPtr;
}

/*
 *----------------------------------------------------------------------
 *
 * DropRequest --
 *
 *	Withdraws a request: stops watching the queue and frees it.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The process no longer wakes for this queue on this request's
 *	account; nothing is taken from the queue.
 *
 *----------------------------------------------------------------------
 */

static void
DropRequest(
    Request *requestPtr)
{
    Request **linkPtr = &requestPtr->dataPtr->firstRequestPtr;

    while (*linkPtr != requestPtr) {
	linkPtr = &(*linkPtr)->nextPtr;
    }
    *linkPtr = requestPtr->nextPtr;
    Tcl_DeleteFileHandler(requestPtr->watchFd);
    CloseFd(&requestPtr->watchFd);
    Tcl_DecrRefCount(requestPtr->handlerObj);
    ckfree((char *) requestPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * ClientCmd --
 *
 *	$cmd client ?-port port? handler
 *	Asks for one connection from the queue.
 *
 * Results:
 *	TCL_OK with an empty result, or TCL_ERROR.
 *
 * Side effects:
 *	The event loop now watches the queue for this interpreter until
 *	a connection is taken (ReceiveConnection) or the request is
 *	withdrawn.
 *
 *----------------------------------------------------------------------
 */

static int
ClientCmd(
    InterpData *dataPtr,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj *handlerObj = objv[objc-1];
    Queue *queuePtr;
    Request *requestPtr;
    int length, watchFd;

    if ((objc != 3 && objc != 5)
	    || (objc == 3 && strcmp(Tcl_GetString(objv[2]), "-port") == 0)) {
	Tcl_WrongNumArgs(interp, 2, objv, "?-port port? handler");
	return TCL_ERROR;
    }
    if (LookupQueue(interp, objc - 1, objv, 2, &queuePtr) != TCL_OK
	    || Tcl_ListObjLength(interp, handlerObj, &length) != TCL_OK) {
	return TCL_ERROR;
    }
    if (length == 0) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"handler must be a non-empty command prefix", -1));
	Tcl_SetErrorCode(interp, "TCL", "VALUE", "HANDLER", NULL);
	return TCL_ERROR;
    }
    if (FindRequest(dataPtr, queuePtr) != NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"a request for a connection from port %d is already pending "
		"in this interpreter", queuePtr->port));
	SetPortErrorCode(interp, "PENDING", queuePtr->port);
	return TCL_ERROR;
    }

    watchFd = fcntl(queuePtr->recvFd, F_DUPFD_CLOEXEC, 0);
    if (watchFd < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: %s",
		queuePtr->port, Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    if (watchFd >= FD_SETSIZE) {
	/* Tcl's select()-based notifier can't watch it. */
	close(watchFd);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: every descriptor "
		"below %d is in use and Tcl's notifier can't watch higher "
		"ones", queuePtr->port, FD_SETSIZE));
	SetPortErrorCode(interp, "FDLIMIT", queuePtr->port);
	return TCL_ERROR;
    }

    requestPtr = (Request *) ckalloc(sizeof(Request));
    requestPtr->dataPtr = dataPtr;
    requestPtr->queuePtr = queuePtr;
    requestPtr->watchFd = watchFd;
    requestPtr->handlerObj = handlerObj;
    Tcl_IncrRefCount(handlerObj);
    requestPtr->generation = forkGeneration;
    requestPtr->nextPtr = dataPtr->firstRequestPtr;
    dataPtr->firstRequestPtr = requestPtr;
    Tcl_CreateFileHandler(watchFd, TCL_READABLE, ReceiveConnection,
	    requestPtr);
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * ReceiveConnection --
 *
 *	File handler: the queue is readable for a pending request. Takes
 *	one connection if another process did not take it first.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	On a connection: the request ends and the handler is called. At end
 *	of file (the serving process is gone) or on an error: the request
 *	ends with a background error. A malformed message is discarded and
 *	the request goes on waiting.
 *
 *----------------------------------------------------------------------
 */

static void
ReceiveConnection(
    ClientData clientData,
    int mask)
{
    Request *requestPtr = clientData;
    Queue *queuePtr = requestPtr->queuePtr;
    Tcl_Interp *interp = requestPtr->dataPtr->interp;
    Tcl_Obj *handlerObj;
    Payload payload;
    ssize_t got;
    int fd;

    (void) mask;
    if (requestPtr->generation != forkGeneration) {
	/* Made by the parent of a fork: this process never asked. */
	DropRequest(requestPtr);
	return;
    }

    got = ancil_recv_fd(requestPtr->watchFd, &fd, &payload, sizeof(payload),
	    MSG_DONTWAIT);
    if (got < 0) {
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EBADMSG) {
	    /* Another process took it, or it was malformed: keep waiting. */
	    return;
	}
	RefuseRequest(interp, requestPtr, Tcl_ObjPrintf(
		"couldn't receive a connection from port %d: %s",
		queuePtr->port, Tcl_PosixError(interp)), NULL);
	return;
    }
    if (got == 0) {
	RefuseRequest(interp, requestPtr, Tcl_ObjPrintf(
		"the queue of port %d is closed: the serving process is gone",
		queuePtr->port), "CLOSED");
	return;
    }
    if ((size_t) got != sizeof(payload) || payload.magic != PAYLOAD_MAGIC
	    || payload.addrLen > sizeof(payload.addr)
	    || (payload.addr.ss_family != AF_INET
		    && payload.addr.ss_family != AF_INET6)) {
	close(fd);
	return;
    }

    pthread_mutex_lock(&queueLock);
    queuePtr->received++;
    pthread_mutex_unlock(&queueLock);

    handlerObj = requestPtr->handlerObj;
    Tcl_IncrRefCount(handlerObj);
    DropRequest(requestPtr);
    DeliverConnection(interp, handlerObj, queuePtr, fd, &payload);
    Tcl_DecrRefCount(handlerObj);
}

/*
 *----------------------------------------------------------------------
 *
 * RefuseRequest --
 *
 *	Ends a request with a background error: messageObj as the message,
 *	and -errorcode {SOCKETSERVER code port} if code is not NULL (else
 *	the POSIX error code already set in interp).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The request is dropped; the interpreter's background error handler
 *	runs.
 *
 *----------------------------------------------------------------------
 */

static void
RefuseRequest(
    Tcl_Interp *interp,
    Request *requestPtr,
    Tcl_Obj *messageObj,
    const char *code)
{
    int port = requestPtr->queuePtr->port;

    DropRequest(requestPtr);
    Tcl_Preserve(interp);
    Tcl_SetObjResult(interp, messageObj);
    if (code != NULL) {
	SetPortErrorCode(interp, code, port);
    }
    Tcl_AddErrorInfo(interp, "\n    (socketserver request for a connection)");
    Tcl_BackgroundException(interp, TCL_ERROR);
    Tcl_Release(interp);
}

/*
 *----------------------------------------------------------------------
 *
 * DeliverConnection --
 *
 *	Wraps a received connection in a Tcl TCP channel registered in
 *	interp and calls {*}handler channel addr port at global level.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The handler owns the channel. Its errors go to the background
 *	error handler.
 *
 *----------------------------------------------------------------------
 */

static void
DeliverConnection(
    Tcl_Interp *interp,
    Tcl_Obj *handlerObj,
    Queue *queuePtr,
    int fd,
    const Payload *payloadPtr)
{
    static const int stdTypes[3] = {TCL_STDIN, TCL_STDOUT, TCL_STDERR};
    char host[NI_MAXHOST], service[NI_MAXSERV];
    int i, code;
    Tcl_Channel chan;
    Tcl_Obj *cmdObj;

    if (getnameinfo((const struct sockaddr *) &payloadPtr->addr,
	    payloadPtr->addrLen, host, sizeof(host), service,
	    sizeof(service), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
	strcpy(host, "");
	strcpy(service, "0");
    }

    Tcl_Preserve(interp);

    /*
     * Tcl_CreateChannel silently turns a new channel into any standard
     * channel the script closed, renamed "stdout" and all, so a later
     * [puts] would write to the client. Mark closed standard channels as
     * staying closed first (Tcl_SetStdChannel(NULL, ...) does that).
     */

    for (i = 0; i < 3; i++) {
	if (Tcl_GetStdChannel(stdTypes[i]) == NULL) {
	    Tcl_SetStdChannel(NULL, stdTypes[i]);
	}
    }
    chan = Tcl_MakeTcpClientChannel((ClientData) (intptr_t) fd);
    Tcl_RegisterChannel(interp, chan);

    /*
     * The descriptor is blocking already, but say so through Tcl so the
     * channel and the descriptor agree whatever the system did.
     */

    Tcl_SetChannelOption(NULL, chan, "-blocking", "1");

    cmdObj = Tcl_DuplicateObj(handlerObj);
    Tcl_IncrRefCount(cmdObj);
    Tcl_ListObjAppendElement(NULL, cmdObj,
	    Tcl_NewStringObj(Tcl_GetChannelName(chan), -1));
    Tcl_ListObjAppendElement(NULL, cmdObj, Tcl_NewStringObj(host, -1));
    Tcl_ListObjAppendElement(NULL, cmdObj, Tcl_NewIntObj(atoi(service)));
    code = Tcl_EvalObjEx(interp, cmdObj, TCL_EVAL_GLOBAL);
    if (code != TCL_OK) {
	Tcl_AddErrorInfo(interp, Tcl_GetString(Tcl_ObjPrintf(
		"\n    (socketserver handler for a connection from port %d)",
		queuePtr->port)));
	Tcl_BackgroundException(interp, code);
    }
    Tcl_DecrRefCount(cmdObj);
    Tcl_Release(interp);
}

/*
 *----------------------------------------------------------------------
 *
 * CancelCmd --
 *
 *	$cmd cancel ?-port port?
 *	Withdraws this interpreter's pending request.
 *
 * Results:
 *	TCL_OK with 1 if a request was withdrawn, 0 if none was pending;
 *	or TCL_ERROR.
 *
 * Side effects:
 *	Nothing is taken from the queue: connections stay there for the
 *	next requester.
 *
 *----------------------------------------------------------------------
 */

static int
CancelCmd(
    InterpData *dataPtr,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Queue *queuePtr;
    Request *requestPtr;

    if (objc != 2 && objc != 4) {
	Tcl_WrongNumArgs(interp, 2, objv, "?-port port?");
	return TCL_ERROR;
    }
    if (LookupQueue(interp, objc, objv, 2, &queuePtr) != TCL_OK) {
	return TCL_ERROR;
    }
    requestPtr = FindRequest(dataPtr, queuePtr);
    if (requestPtr != NULL) {
	DropRequest(requestPtr);
    }
    Tcl_SetObjResult(interp, Tcl_NewBooleanObj(requestPtr != NULL));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * CloseCmd --
 *
 *	$cmd close port
 *	Stops listening on port in this process.
 *
 * Results:
 *	TCL_OK with an empty result, or TCL_ERROR ({SOCKETSERVER
 *	NOTLISTENING port} if this process does not listen on port).
 *
 * Side effects:
 *	See StopAccepting. The queue stays: a later 'server port' resumes
 *	into it.
 *
 *----------------------------------------------------------------------
 */

static int
CloseCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Queue *queuePtr;
    int port;

    if (objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "port");
	return TCL_ERROR;
    }
    if (ParsePort(interp, objv[2], &port) != TCL_OK) {
	return TCL_ERROR;
    }
    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(port);
    if (queuePtr == NULL || queuePtr->state != LISTENING) {
	pthread_mutex_unlock(&queueLock);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"this process is not listening on port %d", port));
	SetPortErrorCode(interp, "NOTLISTENING", port);
	return TCL_ERROR;
    }
    queuePtr->state = STOPPING;
    pthread_mutex_unlock(&queueLock);

    StopAccepting(queuePtr);
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * InfoCmd --
 *
 *	$cmd info ?port?
 *	Without port: the ports this process knows. With port: a dict
 *	describing it.
 *
 * Results:
 *	TCL_OK with the list or dict, or TCL_ERROR ({SOCKETSERVER NOSERVER
 *	port} for an unknown port).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
InfoCmd(
    InterpData *dataPtr,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj *resultObj = Tcl_NewObj();
    Queue *queuePtr;
    int port, requested;

    if (objc != 2 && objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "?port?");
	return TCL_ERROR;
    }
    if (objc == 2) {
	pthread_mutex_lock(&queueLock);
	for (queuePtr = firstQueuePtr; queuePtr != NULL;
		queuePtr = queuePtr->nextPtr) {
	    Tcl_ListObjAppendElement(NULL, resultObj,
		    Tcl_NewIntObj(queuePtr->port));
	}
	pthread_mutex_unlock(&queueLock);
	Tcl_SetObjResult(interp, resultObj);
	return TCL_OK;
    }

    if (ParsePort(interp, objv[2], &port) != TCL_OK) {
	Tcl_DecrRefCount(resultObj);
	return TCL_ERROR;
    }
    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(port);
    pthread_mutex_unlock(&queueLock);
    if (queuePtr == NULL) {
	Tcl_DecrRefCount(resultObj);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"no server on port %d in this process", port));
	SetPortErrorCode(interp, "NOSERVER", port);
	return TCL_ERROR;
    }
    requested = (FindRequest(dataPtr, queuePtr) != NULL);

#define PUT(key, valueObj) \
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj((key), -1), (valueObj))
    pthread_mutex_lock(&queueLock);
    PUT("port", Tcl_NewIntObj(queuePtr->port));
    PUT("myaddr", Tcl_NewStringObj(queuePtr->myaddr, -1));
    PUT("listening", Tcl_NewBooleanObj(queuePtr->state == LISTENING));
    PUT("accepted", Tcl_NewLongObj(queuePtr->accepted));
    PUT("received", Tcl_NewLongObj(queuePtr->received));
    PUT("requested", Tcl_NewBooleanObj(requested));
    errno = queuePtr->lastErrno;
    PUT("lasterror", Tcl_NewStringObj(errno ? Tcl_ErrnoId() : "", -1));
    pthread_mutex_unlock(&queueLock);
#undef PUT
    Tcl_SetObjResult(interp, resultObj);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * SocketserverObjCmd --
 *
 *	::socketserver::socket subcommand ?arg ...?
 *
 * Results:
 *	A standard Tcl result.
 *
 * Side effects:
 *	See the subcommands.
 *
 *----------------------------------------------------------------------
 */

static int
SocketserverObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const subcommands[] = {
	"cancel", "client", "close", "info", "server", NULL
    };
    enum subcommands {
	SUB_CANCEL, SUB_CLIENT, SUB_CLOSE, SUB_INFO, SUB_SERVER
    };
    InterpData *dataPtr = clientData;
    int index;

    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "subcommand ?arg ...?");
	return TCL_ERROR;
    }
    if (Tcl_GetIndexFromObj(interp, objv[1], subcommands, "subcommand", 0,
	    &index) != TCL_OK) {
	return TCL_ERROR;
    }

    switch ((enum subcommands) index) {
    case SUB_CANCEL:
	/* $cmd cancel ?-port port? */
	return CancelCmd(dataPtr, interp, objc, objv);
    case SUB_CLIENT:
	/* $cmd client ?-port port? handler */
	return ClientCmd(dataPtr, interp, objc, objv);
    case SUB_CLOSE:
	/* $cmd close port */
	return CloseCmd(interp, objc, objv);
    case SUB_INFO:
	/* $cmd info ?port? */
	return InfoCmd(dataPtr, interp, objc, objv);
    case SUB_SERVER:
	/* $cmd server ?-myaddr addr? ?-backlog n? port */
	return ServerCmd(interp, objc, objv);
    }
    return TCL_ERROR;
}

/*
 *----------------------------------------------------------------------
 *
 * DeleteInterpData --
 *
 *	Interpreter deletion: withdraws its pending requests.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Frees the interpreter's data. Servers stay: they belong to the
 *	process.
 *
 *----------------------------------------------------------------------
 */

static void
DeleteInterpData(
    ClientData clientData,
    Tcl_Interp *interp)
{
    InterpData *dataPtr = clientData;

    (void) interp;
    while (dataPtr->firstRequestPtr != NULL) {
	DropRequest(dataPtr->firstRequestPtr);
    }
    ckfree((char *) dataPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * Socketserver_Init --
 *
 *	Initializes the package in interp: creates ::socketserver::socket.
 *
 * Results:
 *	A standard Tcl result.
 *
 * Side effects:
 *	The first call in a process installs fork and exit handlers.
 *
 *----------------------------------------------------------------------
 */

int
Socketserver_Init(
    Tcl_Interp *interp)
{
    InterpData *dataPtr;

    if (Tcl_InitStubs(interp, "8.6", 0) == NULL) {
	return TCL_ERROR;
    }
    pthread_once(&setupOnce, SetupProcess);

    dataPtr = (InterpData *) ckalloc(sizeof(InterpData));
    dataPtr->interp = interp;
    dataPtr->firstRequestPtr = NULL;
    Tcl_SetAssocData(interp, ASSOC_KEY, DeleteInterpData, dataPtr);
    Tcl_CreateObjCommand(interp, "::socketserver::socket",
	    SocketserverObjCmd, dataPtr, NULL);
    return Tcl_PkgProvide(interp, PACKAGE_NAME, PACKAGE_VERSION);
}

/*
 *----------------------------------------------------------------------
 *
 * Socketserver_SafeInit --
 *
 *	Refuses: a safe interpreter must not open listening sockets.
 *
 * Results:
 *	TCL_ERROR with a message.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

int
Socketserver_SafeInit(
    Tcl_Interp *interp)
{
    if (Tcl_InitStubs(interp, "8.6", 0) == NULL) {
	return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewStringObj(
	    "socketserver can't be loaded into a safe interpreter: it opens "
	    "listening sockets and shares them with forked processes", -1));
    Tcl_SetErrorCode(interp, "SOCKETSERVER", "SAFE", NULL);
    return TCL_ERROR;
}
