/*
 * socketserver.c --
 *
 *	A pre-forked TCP server for Tcl. One process listens on a port and a
 *	background thread accepts connections. Processes forked from it ask
 *	for connections one at a time, and each accepted connection goes to
 *	exactly one process that asked, first come, first served.
 *
 *	The queue of a port is a SOCK_SEQPACKET socketpair that the serving
 *	process shares with every process forked from it. Asking processes
 *	write to it; only the serving process's accept thread reads it. Each
 *	interpreter that asks has a reply socket per port (a Receiver), made
 *	for its first ask, whose sending end that ask carries up; later asks
 *	are a few bytes. The accept thread keeps the asks in a FIFO and
 *	passes each accepted connection (SCM_RIGHTS) over the reply socket of
 *	the oldest ask. So exactly one process wakes per connection, however
 *	many are waiting: the one whose ask is served. A connection accepted
 *	while no ask waits goes into the port's small ready queue instead,
 *	from which the next 'client' takes it at once, with no ask and no
 *	wake-up.
 *
 *	One connection, start to end, in the order of this file:
 *	    AcceptConnections (accept thread) accept()s it,
 *	    HandOverFirstPending              sends the oldest it holds to
 *	                                      the oldest ask, or into the
 *	                                      ready queue;
 *	    ClientCmd (asking process)        had sent that ask (SendAsk), or
 *	                                      takes a ready connection;
 *	    ReceiveConnection                 recvmsg()s it from the reply
 *	                                      socket, woken by a watcher
 *	                                      thread (Tcl 8) or a file
 *	                                      handler (Tcl 9), or
 *	    DeliverTaken                      delivers the ready one;
 *	    FinishRequest, DeliverConnection  wrap it and call the handler.
 *	Then: the other ways a request ends (cancel, refusal), a receiver's
 *	life, the commands that make and describe servers, and spawn.
 *
 *	A worker is a process forked from the serving process, or a program
 *	it started with 'spawn' (SpawnCmd), which adopts the queues when it
 *	loads the package (AdoptQueues). ::socketserver::signal (SignalObjCmd)
 *	runs scripts for signals from the event loop.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

/* accept4(), F_DUPFD_CLOEXEC and MSG_CMSG_CLOEXEC on glibc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <tcl.h>

/*
 * Tcl 9 counts list and string lengths in Tcl_Size; 8.6 has no such type.
 */

#ifndef TCL_SIZE_MAX
typedef int Tcl_Size;
#endif

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/select.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

/*
 * SS_LINUX: Linux's own interfaces are used (epoll, eventfd, memfd_create,
 * prctl, SO_PEERCRED). The portable build (make PORTABLE=1, which defines
 * SOCKETSERVER_PORTABLE) uses only POSIX.1-2024's, on Linux too, so that
 * what other systems run is built and tested here.
 */

#if defined(__linux__) && !defined(SOCKETSERVER_PORTABLE)
#define SS_LINUX 1
#define BUILD_NAME	"linux"		/* ::socketserver::build */
#else
#define BUILD_NAME	"portable"
#endif

#ifdef SS_LINUX
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#endif

#include "ancillary.h"

#define PACKAGE_NAME	"socketserver"
#define PACKAGE_VERSION	"2.0"

/*
 * Every message, on the queue, on reply sockets and in the ready queue,
 * is one Message with at most one descriptor. A message of any other
 * size, magic or kind, or with a descriptor where none belongs or none
 * where one does, is discarded and its descriptor closed.
 */

#define MESSAGE_MAGIC	0x53535632u	/* "SSV2" */

#define KIND_ASK	1	/* Up the queue: asker wants one connection
				 * on its reply socket. The first ask of a
				 * receiver carries that socket's sending
				 * end as fd; later ones carry none. */
#define KIND_RETURN	2	/* Up the queue: fd is a connection that this
				 * process received but will not serve. */
#define KIND_CONNECTION	3	/* On a reply socket or in the ready queue:
				 * fd is the connection. */
#define KIND_ADOPT_ASK	4	/* Hand-over to a spawned program: fd is the
				 * asking end of port's queue; addr holds
				 * the numeric address as text. */
#define KIND_ADOPT_READY 5	/* Hand-over: fd is the reading end of port's
				 * ready queue. */
#define KIND_WITHDRAW	6	/* Up the queue, no fd: asker's request was
				 * withdrawn; forget one of its asks. */
#define KIND_ADOPT_BOARD 7	/* Hand-over, before port's KIND_ADOPT_ASK:
				 * fd is the queue's scoreboard. */
#define KIND_RELEASE	8	/* Up the queue: fd is a connection whose
				 * handler answered a request and gave it
				 * back ('release'): the serving process
				 * watches it until the next one comes. */

typedef struct Message {
    uint32_t magic;		/* MESSAGE_MAGIC. */
    uint32_t kind;		/* KIND_*. */
    uint32_t addrLen;		/* Bytes of addr in use (connections). */
    uint32_t port;		/* The queue's port (hand-over). */
    uint64_t sequence;		/* Connections: accept order in the serving
				 * process, so one that comes back up the
				 * queue keeps its place. Hand-over: the
				 * token named in SPAWN_ENV. */
    uint64_t asker;		/* Asks and withdrawals: the id of the
				 * receiver that sends them. */
    struct sockaddr_storage addr;
				/* The peer's address, as accept() gave it. */
} Message;

/*
 * A connection in the serving process, accepted or returned, not handed
 * over yet.
 */

typedef struct Pending {
    int fd;			/* The connection. */
    Message message;		/* Its KIND_CONNECTION message. */
} Pending;

/*
 * A receiver's reply socket as the serving process knows it.
 */

typedef struct ReplySocket {
    uint64_t asker;		/* The receiver's id. */
    int fd;			/* The sending end. */
    struct Slot *slotPtr;	/* The receiver's scoreboard slot, as last
				 * found (HandingTo), or NULL. */
} ReplySocket;

/*
 * A connection the serving process watches instead of handing it over,
 * because it has nothing to read: one that has sent nothing since it was
 * accepted ('server -ready'), or one that a handler gave back between two
 * requests ('release'). It goes into the pending list, with a new
 * sequence, once it is readable (first come, first served by the moment
 * it became ready), and is closed if it stays silent until its deadline.
 * Every connection of one kind waits the same time, so each kind's list,
 * in the order they began to wait, is also in deadline order: its first
 * entry is always the next to expire.
 */

typedef enum WatchKind {
    WATCH_SILENT,		/* Accepted, has sent nothing yet; watched
				 * for -ready seconds. */
    WATCH_PARKED,		/* Released between requests; watched for
				 * -keepalive seconds. */
    WATCH_KINDS			/* How many kinds. */
} WatchKind;

typedef enum ConnReadiness {
    CONN_SILENT,		/* Nothing to read yet. */
    CONN_PARTIAL,		/* Bytes, but not yet -readyafter's mark. */
    CONN_HAS_DATA,		/* Bytes to read: a whole request. */
    CONN_HUNG_UP		/* Its peer closed, or it failed. */
} ConnReadiness;

typedef struct Watched {
    int fd;			/* The connection, or -1: the entry is
				 * free. */
    WatchKind kind;		/* Which list it is in. */
    uint32_t tag;		/* Changes whenever the entry is freed, so
				 * that an epoll event for the connection it
				 * held before is ignored. */
    int prev, next;		/* Neighbours in its kind's list, -1 at
				 * either end. A free entry's next is the
				 * next free entry. */
    uint64_t deadline;		/* CLOCK_MONOTONIC, ns: closed then if still
				 * silent. */
    Message message;		/* Its KIND_CONNECTION message. */
    int lookLater;		/* 1 once it was readable but not ready (a
				 * part of a request): the portable build's
				 * wait (WaitIdle) then leaves it out, as
				 * poll() would wake for it at once again,
				 * and it is looked at every WATCH_POLL_MS. */
} Watched;

/*
 * The scoreboard: what each receiver of a queue is doing, in memory that
 * the serving process shares with every worker (a memfd mapped by each,
 * handed to spawned programs with the queue), as Apache's prefork keeps
 * its scoreboard. A receiver claims a free slot (asker 0) with a
 * compare-and-swap at its first 'client' and alone writes it after,
 * without a lock or a message: two clock reads and a few stores per
 * connection. Anyone reads it ('info'), exactly as it is at that moment,
 * however long the reader was stopped. A reader copies a slot between two
 * equal even values of seq (a seqlock); the writer makes seq odd while it
 * writes. The serving process's accept thread writes one more field,
 * handed, when it sends the receiver a connection: a receiver that waits
 * since before it was handed one holds a connection it has not taken. A
 * slot lives as long as its process: the exit handler marks it exited,
 * with its counts, for whoever collects the process to read; it is freed
 * by its receiver (DropReceiver), or by a reader (or a receiver looking
 * for a slot) that finds its process gone.
 */

typedef enum SlotState {
    SLOT_WAITING = 1,		/* A request is pending: waits for a
				 * connection. */
    SLOT_SERVING,		/* A connection was delivered and no request
				 * has been made since. */
    SLOT_IDLE,			/* The last request ended without a
				 * connection (cancel, refusal). */
    SLOT_EXITED			/* Its process exited (and is not yet
				 * collected by its parent). */
} SlotState;

typedef struct Slot {
    uint64_t asker;		/* The receiver's id, 0 if the slot is
				 * free. */
    uint32_t seq;		/* Odd while the receiver writes. */
    uint32_t state;		/* SlotState. */
    uint64_t since;		/* CLOCK_MONOTONIC, ns: when state began. */
    uint64_t served;		/* Connections delivered. */
    uint16_t family;		/* SERVING: the peer's address family, */
    uint16_t peerPort;		/* port (host order) */
    unsigned char peerAddr[16];	/* and address. */
    uint64_t handed;		/* CLOCK_MONOTONIC, ns: when a connection
				 * was last handed to it (by the accept
				 * thread, or its own 'client' from the
				 * ready queue). Outside seq. */
} Slot;

/*
 * After the slots, what every process that knows the queue may need to
 * know of the serving process's port.
 */

#define MARK_MAX	32	/* Longest -readyafter string. */

typedef struct BoardTrailer {
    uint32_t closed;		/* 1 from 'close' until 'server' listens
				 * again: 'release' then closes its
				 * connection, for no accept thread may be
				 * left to read it. Written by the serving
				 * process, atomic. */
    uint32_t releasing;		/* Workers between their look at closed
				 * and the end of their send of a released
				 * connection (SendReleased): 'close' waits
				 * for none to be left before its last read
				 * of the queue. Atomic. */
    uint32_t markLength;	/* -readyafter: a connection is ready (its
				 * request whole) once the bytes it has sent
				 * contain mark; 0: once it has sent one.
				 * Written by 'server' before its accept
				 * thread starts. */
    char mark[MARK_MAX];	/* The string, markLength bytes. */
} BoardTrailer;

#define BOARD_SLOTS	4096	/* Receivers a queue's scoreboard holds: four
				 * times the most workers prefork runs. */
#define BOARD_BYTES	(BOARD_SLOTS * sizeof(Slot) + sizeof(BoardTrailer))
#define TRAILER(board)	((BoardTrailer *) ((board) + BOARD_SLOTS))

/*
 * Listening states of a queue in this process.
 */

#define NOT_LISTENING	0	/* No listener, no accept thread. */
#define LISTENING	1	/* Listener open, accept thread running. */
#define DRAINING	2	/* 'close' closed the listener; the accept
				 * thread hands over what is pending, then
				 * ends, detached (NOT_LISTENING). */
#define STOPPING	3	/* The accept thread is being joined. */

/*
 * One queue per port, process-wide, never freed: workers forked earlier
 * keep using it across 'close' and a later 'server' on the same port.
 *
 * queueLock guards the list and every field marked (L). Every descriptor
 * the accept thread creates or receives (accept(), recvmsg() of asks) is
 * created and recorded here under the lock, so that a fork, whose prepare
 * handler takes the lock, never copies one that the child handler does
 * not know about and close. The accept thread reads listenFd, askFds[0]
 * and wakeFds without the lock: they are set before it starts and changed
 * only after it is joined.
 */

typedef struct Queue {
    struct Queue *nextPtr;	/* Next queue of the process. (L) */
    int port;			/* Port number; fixed. */
    int askFds[2];		/* The queue. [0] is read by the accept
				 * thread (-1 in forked children); every
				 * process writes asks to [1]. (L) */
    int readyFds[2];		/* Connections accepted while no ask was
				 * waiting: [1], in the serving process
				 * only, is written by the accept thread;
				 * a process calling 'client' takes one from
				 * [0] at once if there is one. Its send
				 * buffer holds only a few. (L) */
    int readyMayHold;		/* 0 once the accept thread found [0]
				 * empty and has not written since. (L) */
    int listenFd;		/* Listening socket or -1. (L) */
    int pollFd;			/* Linux: the accept thread's epoll instance
				 * (WaitIdle), while it runs; else -1. (L) */
    int wakeFds[2];		/* Pipe whose read end, when readable, tells
				 * the accept thread to stop. (L) */
    int state;			/* NOT_LISTENING, LISTENING, DRAINING or
				 * STOPPING. (L) */
    pthread_t thread;		/* The accept thread, when state isn't
				 * NOT_LISTENING. */
    char myaddr[NI_MAXHOST];	/* Numeric address last listened on. (L) */
    Pending *pending;		/* Connections to hand over, in accept
				 * order (by sequence): the accept thread
				 * hands over the first. Accepted ones,
				 * returned ones and, when one is returned,
				 * those it takes back from the ready queue
				 * to put it in front of them. malloc'd. (L) */
    int numPending;		/* How many. (L) */
    int pendingSpace;		/* How many fit without realloc(). (L) */
    uint64_t nextSequence;	/* Sequence of the next accepted
				 * connection. (L) */
    ReplySocket *replySockets;	/* Every receiver that has asked, by the
				 * first ask's order, malloc'd. (L) */
    int numReplySockets;	/* How many. (L) */
    int replySpace;		/* How many fit without realloc(). (L) */
    int pruneMark;		/* Look for hung-up reply sockets when
				 * numReplySockets passes this. (L) */
    uint64_t *asks;		/* The asks read so far and not answered or
				 * withdrawn: their askers' ids, oldest
				 * first, malloc'd. (L) */
    int numAsks;		/* How many. (L) */
    int askSpace;		/* How many fit without realloc(). (L) */
    long accepted;		/* Connections this process accepted. (L) */
    long received;		/* Connections this process took. (L) */
    int lastErrno;		/* Last error the accept thread met, or 0.
				 * (L) */
    uint64_t timeoutNs[WATCH_KINDS];
				/* How long a connection of each kind is
				 * watched, ns: 'server -ready' (0: hand
				 * every connection over at once) and
				 * -keepalive. (L) */
    Watched *watched;		/* Entries of watched connections, used and
				 * free, malloc'd. (L) */
    int watchSpace;		/* How many entries. (L) */
    int freeWatched;		/* First free entry, or -1. (L) */
    int firstWatched[WATCH_KINDS];
				/* Each kind's list: oldest entry, */
    int lastWatched[WATCH_KINDS];
				/* newest entry (-1: empty), */
    int numWatched[WATCH_KINDS];/* and length. (L) */
    int watchLimit;		/* Most connections watched at once: half
				 * the descriptor limit at 'server', at most
				 * WATCH_MAX. (L) */
    int watchPollFd;		/* Linux: the epoll instance that holds the
				 * watched connections, itself held by
				 * pollFd; else -1. (L) */
    long closed;		/* Connections this process closed without
				 * handing them over: silent to the end of
				 * -ready or -keepalive, gone while parked,
				 * closed for room, or by 'close'. (L) */
    int boardFd;		/* The scoreboard's memfd, kept to hand to
				 * spawned programs; fixed. */
    Slot *board;		/* The scoreboard, BOARD_SLOTS slots, mapped
				 * shared; fixed. Lock-free: see Slot. */
} Queue;

/*
 * The state of an interpreter's request for one connection from a queue.
 */

typedef enum RequestState {
    NO_REQUEST,			/* Nothing asked. A connection that comes on
				 * the reply socket all the same (sent for
				 * an ask withdrawn too late) goes back up
				 * the queue. */
    ASKED,			/* An ask is up the queue: the connection
				 * will come on the reply socket. */
    TAKEN			/* 'client' found a connection ready and took
				 * it; a DeliverTaken event delivers it. */
} RequestState;

/*
 * What one interpreter needs to receive connections from one queue: its
 * reply socket, made for its first ask and kept (so an ask is one small
 * message, and the socket's file handler is created once), and its
 * request. Only this interpreter's process wakes when a connection comes
 * for it. Touched only in the interpreter's thread; the fields marked (L)
 * are changed under queueLock too, because a fork's child handler closes
 * or replaces them.
 */

typedef struct Receiver {
    struct Receiver *nextPtr;	/* Next receiver of the same interpreter. */
    struct Receiver *nextInProcess;
				/* Next receiver of the process. (L) */
    struct InterpData *dataPtr;	/* The interpreter. */
    Queue *queuePtr;		/* The queue it receives from. */
    uint64_t id;		/* Names it in its asks: process id and a
				 * count, unique among live processes. */
    Tcl_ThreadId thread;	/* The interpreter's thread. */
    int replyFd;		/* Receiving end of the reply socket, or -1
				 * before the first ask. Watched by a
				 * watcher thread or a file handler
				 * (WatchReplySocket), except while
				 * retryTimer is set. (L) */
    int pollFd;			/* With a watcher thread: its epoll instance,
				 * which holds replyFd (one-shot: re-armed
				 * after each read) and stopFd; else -1. (L) */
    int stopFd;			/* With a watcher thread: eventfd that tells
				 * it to end; else -1. (L) */
    pthread_t watcher;		/* The watcher thread, while pollFd is
				 * open. */
    int watching;		/* 1 from the watcher's start until it is
				 * told to stop (StopWatcher), which the
				 * interpreter's thread or the exit handler
				 * may do, whichever comes first. (L) */
    Tcl_TimerToken retryTimer;	/* Set while replyFd is not watched because
				 * there was no room for a connection's
				 * descriptor. */
    RequestState state;		/* Its request's state. */
    Tcl_Obj *handlerObj;	/* ASKED and TAKEN: the command prefix to
				 * call, one reference; else NULL. */
    int takenFd;		/* TAKEN: the connection; else -1. (L) */
    int keptFd;			/* A connection its handler released whose
				 * next request came at once (Linger): this
				 * receiver's next 'client' takes it, or it
				 * goes up the queue when the event loop is
				 * next idle (SendKept); else -1. (L) */
    Message keptMessage;	/* Its message. */
    Message takenMessage;	/* TAKEN: its message. */
    unsigned long generation;	/* forkGeneration when made: a receiver
				 * copied into a forked child is stale. */
    Slot *slotPtr;		/* Its scoreboard slot, or NULL if the board
				 * was full. Written only by this
				 * receiver. */
} Receiver;

/*
 * An event for a receiver: DeliverTaken delivers a ready connection that
 * 'client' took (from the event loop, never from inside 'client', which a
 * handler calls); ReplyReadable, queued by a watcher thread, reads the
 * reply socket.
 */

typedef struct ReceiverEvent {
    Tcl_Event header;		/* Tcl's part; must be first. */
    Receiver *receiverPtr;	/* The receiver. */
} ReceiverEvent;

/*
 * A connection delivered to a handler in this thread, while its channel is
 * open: what 'release' needs to give it back. A close handler on the
 * channel (ForgetDelivered) frees it. Per thread, like channels.
 */

typedef struct Delivered {
    struct Delivered *nextPtr;	/* Next of this thread. */
    Tcl_Channel chan;		/* Its channel. */
    Queue *queuePtr;		/* The queue it came from. */
    Message message;		/* Its message: the peer's address. */
} Delivered;

static Tcl_ThreadDataKey deliveredKey;
				/* Delivered *: this thread's list. */

/*
 * Per interpreter: its receivers. Touched only in the thread of the
 * interpreter.
 */

typedef struct InterpData {
    Tcl_Interp *interp;		/* The interpreter. */
    Receiver *firstReceiverPtr;	/* Its receivers, one per queue it has
				 * asked from. */
} InterpData;

static pthread_mutex_t queueLock = PTHREAD_MUTEX_INITIALIZER;
static Queue *firstQueuePtr = NULL;	/* Queues of this process. (L) */
static Receiver *allReceivers = NULL;	/* Receivers of every interpreter
					 * of the process. (L) */
static uint32_t receiverCount = 0;	/* Receivers made in this process:
					 * the low half of the next id. (L) */
static int defaultPort = -1;		/* Port of the first server. (L) */
static int releaseDummyFd = -1;		/* One end of a socketpair, made at the
					 * first 'release', that takes the place
					 * of a released connection's descriptor
					 * in its channel (DetachConnection).
					 * (L) */
static int reserveFd = -1;		/* /dev/null, opened with the first
					 * receiver: the descriptor closed to
					 * make room when a process out of
					 * descriptors must send connections
					 * back up the queue (ReturnReceived).
					 * (L) */
static unsigned long forkGeneration = 0;/* Counts forks; changed only in
					 * the child of a fork. */
static pthread_once_t setupOnce = PTHREAD_ONCE_INIT;

/*
 * Signals: ::socketserver::signal. The C handler (CatchSignal) only sets
 * the signal's flag and writes a byte to the wake pipe of the thread whose
 * interpreter set the script; that thread's event loop runs the script.
 * signalLock guards the tables and every field marked (S); the handler
 * reads signalWakeFd and writes signalCaught, both sig_atomic_t.
 */

typedef struct SignalHandler {
    Tcl_Interp *interp;		/* The interpreter that runs the script. (S) */
    Tcl_ThreadId thread;	/* Its thread. (S) */
    Tcl_Obj *scriptObj;		/* The script; one reference. (S) */
    struct sigaction previous;	/* The action before any script was set,
				 * put back when the script is removed. (S) */
    unsigned long generation;	/* forkGeneration when set: one copied into
				 * a forked child is stale (its action is
				 * already put back). (S) */
} SignalHandler;

typedef struct WakePipe {
    struct WakePipe *nextPtr;	/* Next wake pipe of the process. (S) */
    Tcl_ThreadId thread;	/* The thread that watches fds[0]. */
    int fds[2];			/* Pipe, both ends non-blocking and
				 * close-on-exec. (S) */
    unsigned long generation;	/* forkGeneration when made: in a forked
				 * child, fds[0] is /dev/null and fds[1]
				 * closed. (S) */
} WakePipe;

static pthread_mutex_t signalLock = PTHREAD_MUTEX_INITIALIZER;
static SignalHandler *signalHandlers[NSIG];
					/* Script per signal number. (S) */
static WakePipe *firstWakePipe = NULL;	/* One per thread that set a
					 * script. (S) */
static volatile sig_atomic_t signalCaught[NSIG];
					/* Set by CatchSignal; cleared by the
					 * thread that runs the script. */
static volatile sig_atomic_t signalWakeFd[NSIG];
					/* Write end of the wake pipe of the
					 * script's thread, or -1. Written
					 * under signalLock. */
static sigset_t forkMask;		/* The forking thread's signal mask,
					 * which fork's prepare handler saves
					 * and the parent and child handlers
					 * put back. (S) */
static int adoptError = 0;		/* Why adopting the queues handed over
					 * by 'spawn' failed, or 0; set once by
					 * SetupProcess. */
static int forkBreaksNotifier = 0;	/* 1 where Tcl's event loop does not
					 * survive fork() (Tcl 9 on Linux);
					 * set once by SetupProcess. */
static int selectNotifier = 0;		/* 1 where Tcl's notifier watches file
					 * handlers with select() (Tcl 8), so
					 * not a descriptor from FD_SETSIZE
					 * up; set once by SetupProcess. */
static int threadedTcl = 0;		/* 1 if Tcl is built with threads;
					 * set by Socketserver_Init. (L) */
static int watchInThread = 0;		/* 1 where reply sockets are watched
					 * by watcher threads (Tcl 8 with
					 * threads, on Linux), 0 where by file
					 * handlers; set once by SetupProcess.
					 * See WatchReplySocket. */

#define ASSOC_KEY	"socketserver"
#define LISTENER_ENV	"SOCKETSERVER_LISTENER"
				/* "PORT FD CONN...": 'reexec' kept port's
				 * listener open as FD, and the connections
				 * not handed over yet: pending as numbers,
				 * watched as "sN" (silent) and "pN"
				 * (parked). */
#define SPAWN_ENV	"SOCKETSERVER_SPAWN"
				/* "PID NONCE": a hand-over from process PID
				 * waits on standard input. */
#define PAUSE_MS	100	/* Pause after a resource shortage. */
#define RETRY_MS	10	/* Retry after the kernel refused a send for
				 * want of resources. */
#define WATCH_REPLY	0	/* Watcher's epoll tags: the reply socket, */
#define WATCH_STOP	1	/* and the eventfd that stops it. */
#define ACCEPT_STOP	0	/* The accept thread's epoll tags: its stop */
#define ACCEPT_LISTEN	1	/* pipe, the listener and the queue. A reply */
#define ACCEPT_QUEUE	2	/* socket is tagged with its asker's id,
				 * which is never below 2^32 (a process id
				 * in its high half). */
#define ACCEPT_WATCH	3	/* And the epoll instance of the watched
				 * connections (watchPollFd). */
#define WATCH_MAX	65536	/* Most connections a queue watches. */
#define DEFAULT_KEEPALIVE_NS	5000000000u
				/* -keepalive: 5 s, as Apache's
				 * KeepAliveTimeout. */
#define WATCH_BATCH	64	/* Watched connections' events read at
				 * once. */
#define WATCH_POLL_MS	10	/* Without epoll: how often the watched
				 * connections are looked at while one has
				 * sent a part of a request (lookLater). */
#define PEEK_MAX	8192	/* With -readyafter, bytes Readiness looks
				 * at: a request head that fills them is as
				 * good as whole. */
#define LINGER_US	1000	/* How long 'release' waits for the next
				 * request while nobody else waits. */
#define RELEASING_WAIT_MS 200	/* Longest 'close' waits for releases in
				 * flight (a worker killed in the middle of
				 * one never ends it). */
#define QUEUE_WAIT_MS	1000	/* How long 'client' waits for room in a full
				 * queue. */
#define PARENT_POLL_MS	250	/* Portable build: how often a program spawned
				 * with -parentdeath looks for its parent. */
#define PRUNE_MIN	64	/* Smallest pruneMark. */
#define LIST_MIN	8	/* Room in a new list (pending, asks, reply
				 * sockets). */
#define NEW_PORT_TRIES	8	/* Binds 'server 0' tries for a port this
				 * process has never served. */

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
static Queue *		AddQueue(int port, const int askFds[2],
			    const int readyFds[2], int boardFd, Slot *board);
static void		AdoptQueues(void);
static int		ClaimRefused(Tcl_Interp *interp, Queue *queuePtr);
static int		CloseCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static void		CloseFd(int *fdPtr);
static void		DeleteInterpData(ClientData clientData,
			    Tcl_Interp *interp);
static void		DeliverConnection(Tcl_Interp *interp,
			    Tcl_Obj *handlerObj, Queue *queuePtr, int fd,
			    const Message *messagePtr);
static int		DeliverTaken(Tcl_Event *evPtr, int flags);
static void		CloseReplySocket(Receiver *receiverPtr);
static void		StopWatcher(Receiver *receiverPtr);
static void		ReturnReceived(Receiver *receiverPtr);
static void		KeepReserve(void);
static void		RearmReplySocket(Receiver *receiverPtr);
static int		ReplyReadable(Tcl_Event *evPtr, int flags);
static int		WatchReplySocket(Receiver *receiverPtr);
#ifdef SS_LINUX
static void *		WatchReplies(void *clientData);
#endif
static int		DropIfStale(Receiver *receiverPtr);
static void		DropReceiver(Receiver *receiverPtr);
static Receiver *	FindReceiver(InterpData *dataPtr, Queue *queuePtr);
static void		FinishRequest(Receiver *receiverPtr, int fd,
			    const Message *messagePtr);
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
static int		MakeQueueSockets(int askFds[2], int readyFds[2]);
static void		AdoptPassed(Queue *queuePtr, int adoptFd);
static int		AdoptListener(Tcl_Interp *interp, int fd, int port,
			    int *fdPtr, int *boundPortPtr, char *boundAddr);
static int		OpenNewListener(Tcl_Interp *interp,
			    const char *myaddr, int port, int backlog,
			    int *fdPtr, int *boundPortPtr, char *boundAddr);
static int		ParsePort(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int *portPtr);
static int		IsAscii(const char *string, Tcl_Size length);
static int		GetIntInRange(Tcl_Obj *objPtr, Tcl_WideInt min,
			    Tcl_WideInt max, int *valuePtr);
static int		HandOverFirstPending(Queue *queuePtr, int wait);
static ConnReadiness	Readiness(int fd, const BoardTrailer *trailerPtr);
static int		MakePending(Queue *queuePtr, int fd,
			    Message *messagePtr);
static void		WatchConnection(Queue *queuePtr, int fd,
			    Message *messagePtr, WatchKind kind);
static int		ForgetWatched(Queue *queuePtr, int index,
			    int closing);
static int		CloseOldestWatched(Queue *queuePtr);
static void		CloseAllWatched(Queue *queuePtr, int counting);
static int		WatchWaitMs(Queue *queuePtr);
static void		ServeWatched(Queue *queuePtr, int readable);
static void		TakeWatched(Queue *queuePtr, int index,
			    int hungUp);
static void		HandWatchedOver(Queue *queuePtr, int index);
static int		IsConnection(ssize_t got, int fd,
			    const Message *messagePtr);
static int		IsEventOf(Tcl_Event *evPtr, ClientData clientData);
static void		DeleteEventsOf(Receiver *receiverPtr,
			    Tcl_EventProc *proc);
static int		AddReplySocket(Queue *queuePtr, uint64_t asker,
			    int fd);
static int		FindReplySocket(Queue *queuePtr, uint64_t asker);
static void		ForgetReplySocket(Queue *queuePtr, int index);
static int		GrowList(void **listPtr, int *spacePtr, int count,
			    size_t size);
static Receiver *	NewReceiver(InterpData *dataPtr, Queue *queuePtr);
static Tcl_Obj *	BoardObj(Queue *queuePtr);
static Slot *		MakeBoard(int *fdPtr);
static Slot *		MapBoard(int fd);
static void		ClaimSlot(Receiver *receiverPtr);
static void		MarkSlot(Receiver *receiverPtr, SlotState state,
			    const Message *messagePtr);
static void		FreeSlot(Slot *board, uint64_t asker);
static Slot *		HandingTo(Queue *queuePtr, ReplySocket *socketPtr);
static void		StampHanded(Slot *slotPtr);
static void		PruneReplySockets(Queue *queuePtr);
static int		MakeAcceptPoll(Queue *queuePtr);
static int		WaitIdle(Queue *queuePtr, int *listenReadyPtr,
			    int *askReadyPtr);
static void		WatchHangUp(Queue *queuePtr,
			    const ReplySocket *socketPtr, int watch);
static int		SendAsk(Receiver *receiverPtr);
static void		WaitForRoom(Queue *queuePtr);
static int		ReadQueue(Queue *queuePtr);
static int		TakeReady(Queue *queuePtr, int *fdPtr,
			    Message *messagePtr);
static int		PendingAfterDrain(Queue *queuePtr);
static int		AddPending(Queue *queuePtr, int fd,
			    const Message *messagePtr);
static void		DrainReady(Queue *queuePtr);
static void		RemoveFirstPending(Queue *queuePtr);
static int		WithdrawRequest(Receiver *receiverPtr);
static void		ReceiveConnection(ClientData clientData, int mask);
static void		ReturnConnections(Queue *queuePtr, int fd,
			    const Message *messagePtr);
static void		RetryReceive(ClientData clientData);
static void		ForgetDelivered(ClientData clientData);
static int		ReleaseCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		Linger(Queue *queuePtr, int fd);
static int		DetachConnection(int fd);
static int		SendReleased(Queue *queuePtr, int fd,
			    Message *messagePtr, int wait);
static void		WaitReleasing(Queue *queuePtr);
static void		SendKept(Receiver *receiverPtr);
static void		SendKeptWhenIdle(ClientData clientData);
static void		RefuseRequest(Receiver *receiverPtr,
			    Tcl_Obj *messageObj, const char *code);
static void		SetPortErrorCode(Tcl_Interp *interp,
			    const char *code, int port);
static int		IsQueueSocket(int fd);
static int		HandedOverBy(long spawner, uint64_t nonce);
static int		WatchParent(long spawner, int deathSignal);
#ifndef SS_LINUX
static void *		WatchParentLife(void *clientData);
#endif
static uint64_t		MakeNonce(int salt);
static int		ServerCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		KeepAcrossExec(Queue *queuePtr, int keep);
static int		ReexecCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		SpawnCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static void		CatchSignal(int signo);
static void		ForgetSignals(int nullFd);
static void		RemoveSignalScript(int signo);
static void		RunCaughtSignals(ClientData clientData, int mask);
static int		ParseSignal(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int catchable, int *signoPtr);
static int		KillObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		GetPid(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int *pidPtr);
static int		ExitedObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		DescriptorsObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		NotifyObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		WaitObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		RunasObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		SignalObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static WakePipe *	ThreadWakePipe(Tcl_Interp *interp);
static void		SetupProcess(void);
static int		SocketserverObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		StartAccepting(Tcl_Interp *interp, Queue *queuePtr,
			    int listenFd);
static void		StopAccepting(Queue *queuePtr, int *listenFdPtr);
static int		ToldToStop(Queue *queuePtr);
static int		Drained(Queue *queuePtr);
static void		FinishDraining(Queue *queuePtr);
static int		ClaimListening(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    Queue **queuePtrPtr);
static int		WaitFor(Queue *queuePtr, int fd, short events,
			    int otherFd, short otherEvents, int timeoutMs);

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
 *	handler, notes how Tcl's notifier waits and whether it survives
 *	fork(), and adopts the queues a spawning process handed over.
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
    int major;

    Tcl_GetVersion(&major, NULL, NULL, NULL);
    selectNotifier = (major < 9);
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) \
	|| defined(__OpenBSD__) || defined(__DragonFly__)
    /*
     * Tcl 9 waits with one epoll instance per thread and nothing makes a
     * new one in a forked child: parent and child would share it. (The
     * BSDs' Tcl 9 waits with a kqueue, which a forked child does not
     * inherit at all.) A fact about Tcl, so the portable build too.
     */

    forkBreaksNotifier = (major >= 9);
#endif
#ifdef SS_LINUX
    /*
     * Tcl 8's notifier waits in a thread of its own. See WatchReplySocket.
     */

    pthread_mutex_lock(&queueLock);
    watchInThread = (major < 9 && threadedTcl);
    pthread_mutex_unlock(&queueLock);
#endif
    pthread_atfork(AtForkPrepare, AtForkParent, AtForkChild);
    Tcl_CreateExitHandler(FinalizeServers, NULL);
    AdoptQueues();
}

/*
 *----------------------------------------------------------------------
 *
 * AtForkPrepare, AtForkParent, AtForkChild --
 *
 *	Keep fork() from copying half-made state. The prepare handler takes
 *	signalLock and queueLock, under which every descriptor of the accept
 *	thread is created and recorded, and blocks every signal until the
 *	parent and child handlers are done: a signal sent to the child the
 *	moment fork() returns waits until the child has put back its own
 *	actions (ForgetSignals), instead of going to the parent's script,
 *	whose C handler would swallow it. The child, which has no accept
 *	thread, closes what belongs to the serving process alone: listeners,
 *	the reading ends of the queues, the writing ends of the ready
 *	queues, the stop pipes, the reply sockets' sending ends and every
 *	connection accepted but not handed over; and its copies of ready
 *	connections that requests took but have not delivered.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	In the child: counters start at 0, every receiver copied from the
 *	parent becomes stale, and so does every signal script
 *	(ForgetSignals). The child's copy of a stale receiver's reply
 *	socket is replaced by /dev/null at the same number (so Tcl's
 *	notifier, which may still watch that number, sees a harmless
 *	descriptor until the receiver is dropped), so that a connection sent
 *	to the parent never waits in a copy that nobody reads. Once the
 *	serving process exits, workers see end of file on their reply
 *	sockets.
 *
 *----------------------------------------------------------------------
 */

static void
AtForkPrepare(void)
{
    sigset_t all;

    pthread_mutex_lock(&signalLock);
    pthread_mutex_lock(&queueLock);
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &forkMask);
}

static void
AtForkParent(void)
{
    pthread_sigmask(SIG_SETMASK, &forkMask, NULL);
    pthread_mutex_unlock(&queueLock);
    pthread_mutex_unlock(&signalLock);
}

static void
AtForkChild(void)
{
    Queue *queuePtr;
    Receiver *receiverPtr;
    int i, nullFd;

    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	CloseFd(&queuePtr->listenFd);
	CloseFd(&queuePtr->pollFd);
	CloseFd(&queuePtr->askFds[0]);
	CloseFd(&queuePtr->readyFds[1]);
	CloseFd(&queuePtr->wakeFds[0]);
	CloseFd(&queuePtr->wakeFds[1]);
	for (i = 0; i < queuePtr->numPending; i++) {
	    CloseFd(&queuePtr->pending[i].fd);
	}
	queuePtr->numPending = 0;
	CloseAllWatched(queuePtr, 0);
	for (i = 0; i < queuePtr->numReplySockets; i++) {
	    CloseFd(&queuePtr->replySockets[i].fd);
	}
	queuePtr->numReplySockets = 0;
	queuePtr->numAsks = 0;
	queuePtr->state = NOT_LISTENING;
	queuePtr->accepted = 0;
	queuePtr->received = 0;
	queuePtr->lastErrno = 0;
    }

    nullFd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (receiverPtr = allReceivers; receiverPtr != NULL;
	    receiverPtr = receiverPtr->nextInProcess) {
	if (receiverPtr->replyFd >= 0 && (nullFd < 0
		|| dup3(nullFd, receiverPtr->replyFd, O_CLOEXEC) < 0)) {
	    close(receiverPtr->replyFd);
	}
	CloseFd(&receiverPtr->pollFd);
	CloseFd(&receiverPtr->stopFd);
	receiverPtr->watching = 0;
	CloseFd(&receiverPtr->takenFd);
	CloseFd(&receiverPtr->keptFd);
	receiverPtr->slotPtr = NULL;	/* The parent's. */
    }
    ForgetSignals(nullFd);
    CloseFd(&nullFd);
    forkGeneration++;
    pthread_sigmask(SIG_SETMASK, &forkMask, NULL);
    pthread_mutex_unlock(&queueLock);
    pthread_mutex_unlock(&signalLock);
}

/*
 *----------------------------------------------------------------------
 *
 * FinalizeServers --
 *
 *	Exit handler: stops every accept thread and watcher thread of this
 *	process so that exit never races a running thread.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Listeners are closed; queued connections stay with the workers.
 *	Watcher threads end, and connections that came to this process's
 *	requests go back up their queues.
 *
 *----------------------------------------------------------------------
 */

static void
FinalizeServers(
    ClientData clientData)
{
    Queue *queuePtr;
    Receiver *receiverPtr;

    (void) clientData;
    pthread_mutex_lock(&queueLock);
    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	if (queuePtr->state != NOT_LISTENING) {
	    queuePtr->state = STOPPING;
	    pthread_mutex_unlock(&queueLock);
	    StopAccepting(queuePtr, NULL);
	    pthread_mutex_lock(&queueLock);
	}
    }

    /*
     * Watcher threads queue Tcl events: stop them before Tcl finalizes its
     * notifier and allocator. (Receivers are freed only with their
     * interpreters, after this handler.)
     */

    for (;;) {
	for (receiverPtr = allReceivers; receiverPtr != NULL
		&& !receiverPtr->watching;
		receiverPtr = receiverPtr->nextInProcess) {
	}
	pthread_mutex_unlock(&queueLock);
	if (receiverPtr == NULL) {
	    break;
	}
	StopWatcher(receiverPtr);
	pthread_mutex_lock(&queueLock);
    }

    /*
     * Tcl_Exit does not delete interpreters: a process that exits with a
     * request pending must not take a connection with it.
     */

    pthread_mutex_lock(&queueLock);
    for (receiverPtr = allReceivers; receiverPtr != NULL;
	    receiverPtr = receiverPtr->nextInProcess) {
	if (receiverPtr->generation == forkGeneration) {
	    ReturnReceived(receiverPtr);
	    MarkSlot(receiverPtr, SLOT_EXITED, NULL);
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

    if (pipe2(wakeFds, O_CLOEXEC) < 0) {
	error = errno;
	goto failed;
    }
    if (fcntl(listenFd, F_SETFL, O_NONBLOCK) < 0) {
	error = errno;
	CloseFd(&wakeFds[0]);
	CloseFd(&wakeFds[1]);
	goto failed;
    }

    pthread_mutex_lock(&queueLock);
    queuePtr->listenFd = listenFd;
    queuePtr->wakeFds[0] = wakeFds[0];
    queuePtr->wakeFds[1] = wakeFds[1];
    error = MakeAcceptPoll(queuePtr);
    pthread_mutex_unlock(&queueLock);

    /*
     * The thread blocks every signal, so that signals (TclX 'signal trap')
     * reach the interpreters' threads.
     */

    if (error == 0) {
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	error = pthread_create(&queuePtr->thread, NULL, AcceptConnections,
		queuePtr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (error == 0) {
	    return TCL_OK;
	}
    }

    pthread_mutex_lock(&queueLock);
    CloseFd(&queuePtr->pollFd);
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
 * MakeAcceptPoll --
 *
 *	queueLock held: on Linux, makes the epoll instance the accept thread
 *	waits with (WaitIdle): the stop pipe, the listener, the queue and the
 *	epoll instance of the watched connections (made here if need be) for
 *	reading, and every reply socket known so far for hang-ups.
 *
 * Results:
 *	0, or an errno value (no instance then).
 *
 * Side effects:
 *	Sets pollFd.
 *
 *----------------------------------------------------------------------
 */

static int
MakeAcceptPoll(
    Queue *queuePtr)
{
#ifdef SS_LINUX
    struct epoll_event event;
    int fds[4], i, error;

    if (queuePtr->watchPollFd < 0) {
	queuePtr->watchPollFd = epoll_create1(EPOLL_CLOEXEC);
	if (queuePtr->watchPollFd < 0) {
	    return errno;
	}
    }
    queuePtr->pollFd = epoll_create1(EPOLL_CLOEXEC);
    if (queuePtr->pollFd < 0) {
	return errno;
    }
    fds[ACCEPT_STOP] = queuePtr->wakeFds[0];
    fds[ACCEPT_LISTEN] = queuePtr->listenFd;
    fds[ACCEPT_QUEUE] = queuePtr->askFds[0];
    fds[ACCEPT_WATCH] = queuePtr->watchPollFd;
    for (i = 0; i < 4; i++) {
	memset(&event, 0, sizeof(event));
	event.events = EPOLLIN;
	event.data.u64 = i;
	if (epoll_ctl(queuePtr->pollFd, EPOLL_CTL_ADD, fds[i], &event) < 0) {
	    error = errno;
	    CloseFd(&queuePtr->pollFd);
	    return error;
	}
    }
    for (i = 0; i < queuePtr->numReplySockets; i++) {
	WatchHangUp(queuePtr, &queuePtr->replySockets[i], 1);
    }
#else
    (void) queuePtr;
#endif
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * AcceptConnections --
 *
 *	The accept thread of one queue: accepts connections and hands each
 *	to the oldest ask, one at a time, until told to stop. It never
 *	touches Tcl.
 *
 * Results:
 *	NULL.
 *
 * Side effects:
 *	Connections it could not hand over yet stay pending when it stops,
 *	to go first when accepting resumes.
 *
 *----------------------------------------------------------------------
 */

static void *
AcceptConnections(
    void *clientData)
{
    Queue *queuePtr = clientData;

    for (;;) {
	if (!PendingAfterDrain(queuePtr)) {
	    int listenReady, askReady;

	    if (Drained(queuePtr)) {
		break;
	    }

	    /*
	     * Idle: wait for a connection, and read asks as they come so
	     * that the next connection needs no extra wake-up.
	     */

	    if (!WaitIdle(queuePtr, &listenReady, &askReady)) {
		break;
	    }
	    if (askReady) {
		int emptied;

		pthread_mutex_lock(&queueLock);
		emptied = ReadQueue(queuePtr);
		pthread_mutex_unlock(&queueLock);
		if (!emptied) {
		    WaitFor(queuePtr, -1, 0, -1, 0, PAUSE_MS);
		    continue;
		}
	    }
	    if (!listenReady || !AcceptOneConnection(queuePtr)) {
		continue;
	    }
	}
	if (!HandOverFirstPending(queuePtr, 1)) {
	    break;
	}
    }
    return NULL;
}

/*
 *----------------------------------------------------------------------
 *
 * WaitIdle --
 *
 *	Accept thread, nothing pending: waits until a connection or an ask
 *	comes, a watched connection is ready or its deadline passes, or the
 *	thread is told to stop. On Linux it waits with an epoll instance
 *	that also holds every reply socket (for hang-ups only), so that the
 *	reply socket of a process that died is closed at once, not when it
 *	would next be sent to; the portable build poll()s them all.
 *
 *	Watched connections that are ready go into the pending list
 *	(ServeWatched).
 *
 * Results:
 *	0 if the thread must stop, else 1 with *listenReadyPtr and
 *	*askReadyPtr telling what is readable (both may be 0).
 *
 * Side effects:
 *	Forgets receivers whose reply socket was hung up.
 *
 *----------------------------------------------------------------------
 */

static int
WaitIdle(
    Queue *queuePtr,
    int *listenReadyPtr,
    int *askReadyPtr)
{
#ifdef SS_LINUX
    struct epoll_event events[16];
    int i, n, index, timeoutMs, watchReady = 0;

    *listenReadyPtr = *askReadyPtr = 0;
    pthread_mutex_lock(&queueLock);
    timeoutMs = WatchWaitMs(queuePtr);
    pthread_mutex_unlock(&queueLock);
    n = epoll_wait(queuePtr->pollFd, events, 16, timeoutMs);
    if (n < 0) {
	/* Signals are blocked: only a shortage of memory gets here. */
	return WaitFor(queuePtr, -1, 0, -1, 0, PAUSE_MS);
    }
    for (i = 0; i < n; i++) {
	if (events[i].data.u64 == ACCEPT_WATCH) {
	    watchReady = 1;
	}
    }
    if (timeoutMs >= 0 || watchReady) {
	pthread_mutex_lock(&queueLock);
	ServeWatched(queuePtr, watchReady);
	pthread_mutex_unlock(&queueLock);
    }
    for (i = 0; i < n; i++) {
	switch (events[i].data.u64) {
	case ACCEPT_STOP:
	    if (ToldToStop(queuePtr)) {
		return 0;
	    }
	    break;
	case ACCEPT_LISTEN:
	    *listenReadyPtr = 1;
	    break;
	case ACCEPT_QUEUE:
	    *askReadyPtr = 1;
	    break;
	case ACCEPT_WATCH:
	    break;
	default:
	    /* A reply socket hung up. */
	    pthread_mutex_lock(&queueLock);
	    index = FindReplySocket(queuePtr, events[i].data.u64);
	    if (index >= 0) {
		ForgetReplySocket(queuePtr, index);
	    }
	    pthread_mutex_unlock(&queueLock);
	    break;
	}
    }
    return 1;
#else
    struct pollfd few[3], *fds = few;
    uint64_t *askers = NULL;
    int i, n, m, index, kind, timeoutMs, stop;

    /*
     * The reply sockets too, for hang-ups only (no events asked: POLLHUP
     * and POLLERR always come), and the watched connections, to be woken
     * as one becomes readable, as the epoll instance holds them on Linux;
     * without the memory for that, not this time: they are looked at
     * every WATCH_POLL_MS instead.
     */

    *listenReadyPtr = *askReadyPtr = 0;
    pthread_mutex_lock(&queueLock);
    timeoutMs = WatchWaitMs(queuePtr);
    n = queuePtr->numReplySockets;
    m = queuePtr->numWatched[WATCH_SILENT]
	    + queuePtr->numWatched[WATCH_PARKED];
    if (n + m > 0) {
	fds = malloc((3 + n + m) * sizeof(struct pollfd));
	askers = malloc((n + 1) * sizeof(uint64_t));	/* Never malloc(0). */
	if (fds == NULL || askers == NULL) {
	    free(fds);
	    free(askers);
	    fds = few;
	    askers = NULL;
	    n = m = 0;
	}
    }
    for (i = 0; i < n; i++) {
	fds[3 + i].fd = queuePtr->replySockets[i].fd;
	fds[3 + i].events = 0;
	fds[3 + i].revents = 0;
	askers[i] = queuePtr->replySockets[i].asker;
    }
    m = 0;
    for (kind = 0; fds != few && kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->firstWatched[kind]; index >= 0;
		index = queuePtr->watched[index].next) {
	    if (!queuePtr->watched[index].lookLater) {
		fds[3 + n + m].fd = queuePtr->watched[index].fd;
		fds[3 + n + m].events = POLLIN;
		fds[3 + n + m].revents = 0;
		m++;
	    }
	}
    }
    pthread_mutex_unlock(&queueLock);
    if (fds == few && timeoutMs > WATCH_POLL_MS) {
	timeoutMs = WATCH_POLL_MS;
    }
    fds[0].fd = queuePtr->wakeFds[0];
    fds[1].fd = queuePtr->listenFd;
    fds[2].fd = queuePtr->askFds[0];
    for (i = 0; i < 3; i++) {
	fds[i].events = POLLIN;
	fds[i].revents = 0;
    }
    if (poll(fds, 3 + n + m, timeoutMs) < 0 && errno != EINTR) {
	if (fds != few) {
	    free(fds);
	}
	free(askers);
	return WaitFor(queuePtr, -1, 0, -1, 0, PAUSE_MS);
    }
    pthread_mutex_lock(&queueLock);
    if (timeoutMs >= 0) {
	/* Whichever of them woke it, it looks at them all. */
	ServeWatched(queuePtr, 1);
    }
    for (i = 0; i < n; i++) {
	if (fds[3 + i].revents & (POLLHUP | POLLERR)) {
	    /* Unless another thread forgot it meanwhile. */
	    index = FindReplySocket(queuePtr, askers[i]);
	    if (index >= 0
		    && queuePtr->replySockets[index].fd == fds[3 + i].fd) {
		ForgetReplySocket(queuePtr, index);
	    }
	}
    }
    pthread_mutex_unlock(&queueLock);
    *listenReadyPtr = (fds[1].revents != 0);
    *askReadyPtr = (fds[2].revents != 0);
    stop = (fds[0].revents != 0);
    if (fds != few) {
	free(fds);
    }
    free(askers);
    return (!stop || !ToldToStop(queuePtr));
#endif
}

/*
 *----------------------------------------------------------------------
 *
 * WaitFor --
 *
 *	Accept thread: waits until fd has one of events or otherFd one of
 *	otherEvents (either may be -1), timeoutMs passes (-1: no limit), or
 *	the thread is told to stop; meanwhile serves the watched connections
 *	(ServeWatched), whose readiness or deadline ends the wait too.
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
    int otherFd,
    short otherEvents,
    int timeoutMs)
{
    struct pollfd fds[4];
    int watchMs;

    pthread_mutex_lock(&queueLock);
    watchMs = WatchWaitMs(queuePtr);
    fds[3].fd = (watchMs >= 0) ? queuePtr->watchPollFd : -1;
    pthread_mutex_unlock(&queueLock);
#ifndef SS_LINUX
    /* No epoll instance of them to wait on: look at them this often. */
    if (watchMs > WATCH_POLL_MS) {
	watchMs = WATCH_POLL_MS;
    }
#endif
    if (watchMs >= 0 && (timeoutMs < 0 || watchMs < timeoutMs)) {
	timeoutMs = watchMs;
    }
    fds[0].fd = queuePtr->wakeFds[0];
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    fds[1].fd = fd;
    fds[1].events = events;
    fds[1].revents = 0;
    fds[2].fd = otherFd;
    fds[2].events = otherEvents;
    fds[2].revents = 0;
    fds[3].events = POLLIN;
    fds[3].revents = 0;
    if (poll(fds, 4, timeoutMs) < 0 && errno != EINTR) {
	/*
	 * Only ENOMEM is possible here: pause rather than spin.
	 */

	struct timespec pause = {0, PAUSE_MS * 1000000L};

	nanosleep(&pause, NULL);
    }
    if (watchMs >= 0) {
	pthread_mutex_lock(&queueLock);
#ifdef SS_LINUX
	ServeWatched(queuePtr, fds[3].revents != 0);
#else
	ServeWatched(queuePtr, 1);
#endif
	pthread_mutex_unlock(&queueLock);
    }
    return (fds[0].revents == 0 || !ToldToStop(queuePtr));
}

/*
 *----------------------------------------------------------------------
 *
 * AcceptOneConnection --
 *
 *	Accept thread: accepts one connection from the (non-blocking)
 *	listener, close-on-exec, into the pending list, or with -ready into
 *	the watched ones if it has sent nothing yet.
 *
 * Results:
 *	1 if a connection is now pending, 0 if none was (nothing waiting, an
 *	aborted connection, one watched, or a shortage of descriptors or
 *	memory, after which it pauses instead of spinning unless closing a
 *	watched connection made room).
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
    Message message;
    socklen_t addrLen = sizeof(message.addr);
    int fd, error = 0, pending = 0;

    memset(&message, 0, sizeof(message));
    pthread_mutex_lock(&queueLock);
    if (queuePtr->listenFd < 0) {
	/* 'close' closed it (DRAINING) after the wait saw it readable. */
	pthread_mutex_unlock(&queueLock);
	return 0;
    }
    fd = accept4(queuePtr->listenFd, (struct sockaddr *) &message.addr,
	    &addrLen, SOCK_CLOEXEC);
    if (fd >= 0) {
	message.magic = MESSAGE_MAGIC;
	message.addrLen = addrLen;
	queuePtr->accepted++;

	/*
	 * With -ready, one look: a connection that has sent nothing yet is
	 * watched rather than handed over.
	 */

	ConnReadiness readiness = (queuePtr->timeoutNs[WATCH_SILENT] > 0)
		? Readiness(fd, TRAILER(queuePtr->board)) : CONN_HAS_DATA;

	if (readiness == CONN_SILENT || readiness == CONN_PARTIAL) {
	    WatchConnection(queuePtr, fd, &message, WATCH_SILENT);
	    pending = 0;
	} else {
	    pending = MakePending(queuePtr, fd, &message);
	}
    } else {
	error = errno;
	if (error != EAGAIN && error != EWOULDBLOCK && error != EINTR) {
	    queuePtr->lastErrno = error;
	}
	if ((error == EMFILE || error == ENFILE)
		&& CloseOldestWatched(queuePtr)) {
	    /* Room made: accept again at once. */
	    error = EAGAIN;
	}
    }
    pthread_mutex_unlock(&queueLock);

    switch (error) {
    case 0:
	return pending;
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
	WaitFor(queuePtr, -1, 0, -1, 0, PAUSE_MS);
	return 0;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * Readiness --
 *
 *	Looks, without reading or blocking, at what a connection has for
 *	its reader. With -readyafter (the queue's trailer), bytes are a
 *	whole request once they contain its mark, or fill PEEK_MAX (then
 *	its reader must judge).
 *
 * Results:
 *	CONN_SILENT if nothing yet, CONN_PARTIAL if bytes without the mark,
 *	CONN_HAS_DATA if a request, CONN_HUNG_UP if the peer closed or the
 *	connection failed.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static ConnReadiness
Readiness(
    int fd,
    const BoardTrailer *trailerPtr)
{
    char bytes[PEEK_MAX];
    size_t markLength = trailerPtr->markLength;
    ssize_t got = recv(fd, bytes, (markLength == 0) ? 1 : sizeof(bytes),
	    MSG_PEEK | MSG_DONTWAIT);

    if (got > 0) {
	if (markLength == 0 || got == (ssize_t) sizeof(bytes)
		|| memmem(bytes, (size_t) got, trailerPtr->mark,
		    markLength) != NULL) {
	    return CONN_HAS_DATA;
	}
	return CONN_PARTIAL;
    }
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK
	    || errno == EINTR)) {
	return CONN_SILENT;
    }
    return CONN_HUNG_UP;
}

/*
 *----------------------------------------------------------------------
 *
 * MakePending --
 *
 *	queueLock held: a connection is ready to be handed over now: it
 *	joins the pending list behind every connection there, as the
 *	newest in accept order.
 *
 * Results:
 *	1, or 0 if there was no memory: then it is closed.
 *
 * Side effects:
 *	Counts a closed one in 'closed', with ENOMEM in lastErrno.
 *
 *----------------------------------------------------------------------
 */

static int
MakePending(
    Queue *queuePtr,
    int fd,
    Message *messagePtr)
{
    messagePtr->kind = KIND_CONNECTION;
    messagePtr->sequence = queuePtr->nextSequence++;
    if (!AddPending(queuePtr, fd, messagePtr)) {
	queuePtr->lastErrno = ENOMEM;
	queuePtr->closed++;
	close(fd);
	return 0;
    }
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * WatchConnection --
 *
 *	queueLock held: the serving process keeps a connection that has
 *	nothing to read, watching it for kind's time (WATCH_SILENT: -ready,
 *	WATCH_PARKED: -keepalive). At the limit (watchLimit) the oldest
 *	watched connection makes room (CloseOldestWatched).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	A connection that can't be watched (no memory, no room in epoll)
 *	is handed over at once if silent, as without -ready, or closed if
 *	parked, with the reason in lastErrno; a parked one is closed at
 *	once if -keepalive is 0.
 *
 *----------------------------------------------------------------------
 */

static void
WatchConnection(
    Queue *queuePtr,
    int fd,
    Message *messagePtr,
    WatchKind kind)
{
    Watched *entryPtr;
    int index, error = 0;
    struct timespec now;

    if (queuePtr->timeoutNs[kind] == 0 || queuePtr->state == DRAINING
	    || queuePtr->state == NOT_LISTENING) {
	/* No keep-alive; or the server is closed: nobody would serve it. */
	queuePtr->closed++;
	close(fd);
	return;
    }
    if (queuePtr->numWatched[WATCH_SILENT] + queuePtr->numWatched[WATCH_PARKED]
	    >= queuePtr->watchLimit) {
	CloseOldestWatched(queuePtr);
    }
    if (queuePtr->freeWatched < 0) {
	int space = queuePtr->watchSpace, i;

	if (GrowList((void **) &queuePtr->watched, &queuePtr->watchSpace,
		space, sizeof(Watched))) {
	    for (i = queuePtr->watchSpace - 1; i >= space; i--) {
		queuePtr->watched[i].fd = -1;
		queuePtr->watched[i].tag = 0;
		queuePtr->watched[i].next = queuePtr->freeWatched;
		queuePtr->freeWatched = i;
	    }
	} else {
	    error = ENOMEM;
	}
    }
    index = queuePtr->freeWatched;
#ifdef SS_LINUX
    if (error == 0 && queuePtr->watchPollFd < 0) {
	queuePtr->watchPollFd = epoll_create1(EPOLL_CLOEXEC);
	if (queuePtr->watchPollFd < 0) {
	    error = errno;
	}
    }
    if (error == 0) {
	struct epoll_event event;

	memset(&event, 0, sizeof(event));
	/* Edge-triggered: a part of a request leaves it watched. */
	event.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
	event.data.u64 = ((uint64_t) queuePtr->watched[index].tag << 32)
		| (uint32_t) index;
	if (epoll_ctl(queuePtr->watchPollFd, EPOLL_CTL_ADD, fd, &event) < 0) {
	    error = errno;
	}
    }
#endif
    if (error != 0) {
	queuePtr->lastErrno = error;
	if (kind == WATCH_SILENT) {
	    MakePending(queuePtr, fd, messagePtr);
	} else {
	    queuePtr->closed++;
	    close(fd);
	}
	return;
    }

    entryPtr = &queuePtr->watched[index];
    queuePtr->freeWatched = entryPtr->next;
    clock_gettime(CLOCK_MONOTONIC, &now);
    entryPtr->fd = fd;
    entryPtr->kind = kind;
    entryPtr->lookLater = 0;
    entryPtr->deadline = (uint64_t) now.tv_sec * 1000000000u + now.tv_nsec
	    + queuePtr->timeoutNs[kind];
    entryPtr->message = *messagePtr;
    entryPtr->next = -1;
    entryPtr->prev = queuePtr->lastWatched[kind];
    if (entryPtr->prev >= 0) {
	queuePtr->watched[entryPtr->prev].next = index;
    } else {
	queuePtr->firstWatched[kind] = index;
    }
    queuePtr->lastWatched[kind] = index;
    queuePtr->numWatched[kind]++;
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetWatched --
 *
 *	queueLock held: takes a connection out of the watched ones and
 *	frees its entry; with closing, closes it and counts it in 'closed'.
 *
 * Results:
 *	The connection's descriptor (closed with closing).
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
ForgetWatched(
    Queue *queuePtr,
    int index,
    int closing)
{
    Watched *entryPtr = &queuePtr->watched[index];
    int fd = entryPtr->fd;

    if (entryPtr->prev >= 0) {
	queuePtr->watched[entryPtr->prev].next = entryPtr->next;
    } else {
	queuePtr->firstWatched[entryPtr->kind] = entryPtr->next;
    }
    if (entryPtr->next >= 0) {
	queuePtr->watched[entryPtr->next].prev = entryPtr->prev;
    } else {
	queuePtr->lastWatched[entryPtr->kind] = entryPtr->prev;
    }
    queuePtr->numWatched[entryPtr->kind]--;
    entryPtr->fd = -1;
    entryPtr->tag++;
    entryPtr->next = queuePtr->freeWatched;
    queuePtr->freeWatched = index;
#ifdef SS_LINUX
    {
	struct epoll_event event;

	/*
	 * Closing this descriptor takes the connection out of epoll only if
	 * no other process or descriptor holds it: a stale registration
	 * would report it readable for ever.
	 */

	epoll_ctl(queuePtr->watchPollFd, EPOLL_CTL_DEL, fd, &event);
    }
#endif
    if (closing) {
	queuePtr->closed++;
	CloseFd(&fd);
    }
    return fd;
}

/*
 *----------------------------------------------------------------------
 *
 * CloseOldestWatched --
 *
 *	queueLock held: makes room among the watched connections, or for a
 *	descriptor, by closing the one that has waited longest: a parked one
 *	first (its client opens another when it has something to send, as it
 *	does when any server times it out), else a silent one.
 *
 * Results:
 *	1 if one was closed, 0 if none is watched.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
CloseOldestWatched(
    Queue *queuePtr)
{
    int index = queuePtr->firstWatched[WATCH_PARKED];

    if (index < 0) {
	index = queuePtr->firstWatched[WATCH_SILENT];
    }
    if (index < 0) {
	return 0;
    }
    ForgetWatched(queuePtr, index, 1);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * CloseAllWatched --
 *
 *	queueLock held: closes every watched connection ('close' of the
 *	server), or with counting 0 forgets them and the epoll instance (a
 *	forked child, where they are the parent's).
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
CloseAllWatched(
    Queue *queuePtr,
    int counting)
{
    int kind;

    if (!counting) {
	/*
	 * First: the epoll instance is the parent's too, and what this
	 * child took out of it would be gone from the parent's.
	 */

	CloseFd(&queuePtr->watchPollFd);
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	while (queuePtr->firstWatched[kind] >= 0) {
	    ForgetWatched(queuePtr, queuePtr->firstWatched[kind], 1);
	}
    }
    if (!counting) {
	queuePtr->closed = 0;
    }
    CloseFd(&queuePtr->watchPollFd);
}

/*
 *----------------------------------------------------------------------
 *
 * WatchWaitMs --
 *
 *	queueLock held: how long the accept thread may wait before the
 *	first watched connection's deadline.
 *
 * Results:
 *	Milliseconds (rounded up), or -1 if nothing is watched. In the
 *	portable build, at most WATCH_POLL_MS while a part of a request is
 *	watched (lookLater).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
WatchWaitMs(
    Queue *queuePtr)
{
    uint64_t deadline = UINT64_MAX, nowNs;
    struct timespec now;
    int kind, index;

    for (kind = 0; kind < WATCH_KINDS; kind++) {
	index = queuePtr->firstWatched[kind];
	if (index >= 0 && queuePtr->watched[index].deadline < deadline) {
	    deadline = queuePtr->watched[index].deadline;
	}
    }
    if (deadline == UINT64_MAX) {
	return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    nowNs = (uint64_t) now.tv_sec * 1000000000u + now.tv_nsec;
    if (deadline <= nowNs) {
	return 0;
    }
    deadline = (deadline - nowNs + 999999) / 1000000;
#ifndef SS_LINUX
    /*
     * The portable build's poll() leaves out the parts of requests: they
     * are looked at this often.
     */

    for (kind = 0; deadline > WATCH_POLL_MS && kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->firstWatched[kind]; index >= 0;
		index = queuePtr->watched[index].next) {
	    if (queuePtr->watched[index].lookLater) {
		deadline = WATCH_POLL_MS;
		break;
	    }
	}
    }
#endif
    return (deadline > INT_MAX) ? INT_MAX : (int) deadline;
}

/*
 *----------------------------------------------------------------------
 *
 * ServeWatched --
 *
 *	Accept thread, queueLock held, something watched: with readable 1
 *	(the epoll instance of the watched connections is readable; always,
 *	without epoll), hands over each watched connection that is ready:
 *	into the pending list as the newest; then closes those whose
 *	deadline has passed. A silent connection is ready when it has bytes
 *	or its peer closed; a parked one when it has bytes, and is closed if
 *	its peer closed.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See above; counts what it closes in 'closed'.
 *
 *----------------------------------------------------------------------
 */

static void
ServeWatched(
    Queue *queuePtr,
    int readable)
{
    struct timespec now;
    uint64_t nowNs;
    int kind, index, n = 0, i;
#ifdef SS_LINUX
    struct epoll_event events[WATCH_BATCH];
#else
    struct pollfd *fds = NULL;
#endif

    if (readable) {
#ifdef SS_LINUX
	int batches = (queuePtr->numWatched[WATCH_SILENT]
		+ queuePtr->numWatched[WATCH_PARKED]) / WATCH_BATCH + 1;

	do {
	    n = epoll_wait(queuePtr->watchPollFd, events, WATCH_BATCH, 0);
	    for (i = 0; i < n; i++) {
		index = (int) (uint32_t) events[i].data.u64;
		if (index >= queuePtr->watchSpace
			|| queuePtr->watched[index].fd < 0
			|| queuePtr->watched[index].tag
			    != (uint32_t) (events[i].data.u64 >> 32)) {
		    /* For a connection closed in this batch already. */
		    continue;
		}
		TakeWatched(queuePtr, index, (events[i].events
			& (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
	    }
	} while (n == WATCH_BATCH && --batches > 0);
#else
	n = queuePtr->numWatched[WATCH_SILENT]
		+ queuePtr->numWatched[WATCH_PARKED];
	fds = malloc(n * sizeof(struct pollfd));
	if (fds != NULL) {
	    int *indexes = malloc(n * sizeof(int));

	    i = 0;
	    for (kind = 0; indexes != NULL && kind < WATCH_KINDS; kind++) {
		for (index = queuePtr->firstWatched[kind]; index >= 0;
			index = queuePtr->watched[index].next) {
		    fds[i].fd = queuePtr->watched[index].fd;
		    fds[i].events = POLLIN;
		    fds[i].revents = 0;
		    indexes[i++] = index;
		}
	    }
	    if (indexes != NULL && poll(fds, n, 0) > 0) {
		for (i = 0; i < n; i++) {
		    if (fds[i].revents != 0) {
			TakeWatched(queuePtr, indexes[i],
				(fds[i].revents & (POLLHUP | POLLERR)) != 0);
		    }
		}
	    }
	    free(indexes);
	    free(fds);
	}
#endif
    }

    clock_gettime(CLOCK_MONOTONIC, &now);
    nowNs = (uint64_t) now.tv_sec * 1000000000u + now.tv_nsec;
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	while ((index = queuePtr->firstWatched[kind]) >= 0
		&& queuePtr->watched[index].deadline <= nowNs) {
	    /*
	     * One last look: bytes that came with the deadline still count.
	     */

	    if (Readiness(queuePtr->watched[index].fd,
		    TRAILER(queuePtr->board)) == CONN_HAS_DATA) {
		HandWatchedOver(queuePtr, index);
	    } else {
		ForgetWatched(queuePtr, index, 1);
	    }
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * TakeWatched --
 *
 *	queueLock held: a watched connection was reported readable: see
 *	ServeWatched.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See ServeWatched.
 *
 *----------------------------------------------------------------------
 */

static void
TakeWatched(
    Queue *queuePtr,
    int index,
    int hungUp)
{
    Watched *entryPtr = &queuePtr->watched[index];

    switch (Readiness(entryPtr->fd, TRAILER(queuePtr->board))) {
    case CONN_SILENT:
	entryPtr->lookLater = 1;
	return;
    case CONN_PARTIAL:
	if (!hungUp) {
	    /* The rest of its request may come: wait for it (EPOLLET). */
	    entryPtr->lookLater = 1;
	    return;
	}
	/* Its client is gone after a part: its handler sees that. */
	break;
    case CONN_HUNG_UP:
	if (entryPtr->kind == WATCH_PARKED) {
	    ForgetWatched(queuePtr, index, 1);
	    return;
	}
	/* A silent one's handler sees its client go, as without -ready. */
	break;
    case CONN_HAS_DATA:
	break;
    }
    HandWatchedOver(queuePtr, index);
}

/*
 *----------------------------------------------------------------------
 *
 * HandWatchedOver --
 *
 *	queueLock held: a watched connection is ready: it leaves the
 *	watched ones and joins the pending list as the newest.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See MakePending.
 *
 *----------------------------------------------------------------------
 */

static void
HandWatchedOver(
    Queue *queuePtr,
    int index)
{
    Message message = queuePtr->watched[index].message;
    int fd = ForgetWatched(queuePtr, index, 0);

    MakePending(queuePtr, fd, &message);
}

/*
 *----------------------------------------------------------------------
 *
 * ReadQueue --
 *
 *	Accept thread, queueLock held: reads every message waiting on the
 *	queue, without blocking. An ask joins the FIFO of asks (and the
 *	first of a receiver brings its reply socket); a withdrawal takes
 *	one of its asker's asks out again; a returned connection goes back
 *	into the pending list at its place in accept order, and the ready
 *	queue is drained into that list so that the returned one goes out
 *	before them; a released connection is parked (watched) until its
 *	next request, or pending at once if that has come. Anything else is
 *	discarded.
 *
 * Results:
 *	1 once the queue is empty; 0 if a message has to stay queued because
 *	this process has no room for its descriptor (EMFILE): the caller
 *	pauses before it looks again.
 *
 * Side effects:
 *	Records EBADMSG, EMFILE and ENOMEM in lastErrno. A receiver whose
 *	ask can't be recorded for want of memory is forgotten: it sees end
 *	of file, as if the serving process were gone, rather than wait for
 *	ever.
 *
 *----------------------------------------------------------------------
 */

static int
ReadQueue(
    Queue *queuePtr)
{
    Message message;
    ssize_t got;
    int fd, index;

    for (;;) {
	got = ancil_recv_fd(queuePtr->askFds[0], &fd, &message,
		sizeof(message), MSG_DONTWAIT);
	if (got < 0 && errno == EMFILE) {
	    queuePtr->lastErrno = EMFILE;
	    if (CloseOldestWatched(queuePtr)) {
		/* Room made for it: read it now. */
		continue;
	    }
	    return 0;
	}
	if (got < 0 && errno != EBADMSG) {
	    return 1;
	}
	if (got <= 0 || (size_t) got != sizeof(message)
		|| message.magic != MESSAGE_MAGIC
		|| !((message.kind == KIND_ASK && message.asker > UINT32_MAX)
		    || (message.kind == KIND_WITHDRAW && fd < 0)
		    || (message.kind == KIND_RETURN && fd >= 0)
		    || (message.kind == KIND_RELEASE && fd >= 0))) {
	    /* Nobody here sends such a message: discard it. */
	    queuePtr->lastErrno = EBADMSG;
	    CloseFd(&fd);
	    continue;
	}
	switch (message.kind) {
	case KIND_ASK:
	    index = (fd >= 0) ? AddReplySocket(queuePtr, message.asker, fd)
		    : FindReplySocket(queuePtr, message.asker);
	    if (index < 0) {
		/*
		 * No room to record the socket (ENOMEM), or a later ask of a
		 * receiver already forgotten (its socket was hung up).
		 */

		CloseFd(&fd);
		continue;
	    }
	    if (!GrowList((void **) &queuePtr->asks, &queuePtr->askSpace,
		    queuePtr->numAsks, sizeof(uint64_t))) {
		queuePtr->lastErrno = ENOMEM;
		ForgetReplySocket(queuePtr, index);
		continue;
	    }
	    queuePtr->asks[queuePtr->numAsks++] = message.asker;
	    break;
	case KIND_WITHDRAW:
	    /*
	     * Its newest ask, if one is left: the others keep their places.
	     * None is left when the connection for it was sent already; it
	     * comes back up the queue as a KIND_RETURN.
	     */

	    for (index = queuePtr->numAsks - 1; index >= 0; index--) {
		if (queuePtr->asks[index] == message.asker) {
		    queuePtr->numAsks--;
		    memmove(queuePtr->asks + index, queuePtr->asks + index + 1,
			    (queuePtr->numAsks - index) * sizeof(uint64_t));
		    break;
		}
	    }
	    break;
	case KIND_RELEASE:
	    /*
	     * Its next request may be here already (pipelined): then it
	     * goes out at once. After 'close', nobody would hand it over.
	     */

	    if (queuePtr->state == NOT_LISTENING) {
		queuePtr->closed++;
		close(fd);
		break;
	    }
	    switch (Readiness(fd, TRAILER(queuePtr->board))) {
	    case CONN_HAS_DATA:
		MakePending(queuePtr, fd, &message);
		break;
	    case CONN_SILENT:
	    case CONN_PARTIAL:
		WatchConnection(queuePtr, fd, &message, WATCH_PARKED);
		break;
	    case CONN_HUNG_UP:
		queuePtr->closed++;
		close(fd);
		break;
	    }
	    break;
	default:
	    message.kind = KIND_CONNECTION;
	    if (!AddPending(queuePtr, fd, &message)) {
		/* Its client sees end of file; nothing else can be done. */
		queuePtr->lastErrno = ENOMEM;
		close(fd);
		continue;
	    }
	    DrainReady(queuePtr);
	    break;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * AddReplySocket --
 *
 *	queueLock held: records the reply socket a receiver sent with its
 *	first ask. A receiver of a dead process may still be recorded under
 *	the same id (process ids are reused): the new socket replaces it.
 *
 * Results:
 *	Its index in replySockets, or -1 if there was no memory (fd is left
 *	open, ENOMEM in lastErrno).
 *
 * Side effects:
 *	Every PRUNE_MIN or so new receivers, forgets those whose reply
 *	socket was hung up (PruneReplySockets).
 *
 *----------------------------------------------------------------------
 */

static int
AddReplySocket(
    Queue *queuePtr,
    uint64_t asker,
    int fd)
{
    int index = FindReplySocket(queuePtr, asker);

    if (index >= 0) {
	WatchHangUp(queuePtr, &queuePtr->replySockets[index], 0);
	close(queuePtr->replySockets[index].fd);
	queuePtr->replySockets[index].fd = fd;
	WatchHangUp(queuePtr, &queuePtr->replySockets[index], 1);
	return index;
    }
    if (queuePtr->numReplySockets >= queuePtr->pruneMark) {
	PruneReplySockets(queuePtr);
    }
    if (!GrowList((void **) &queuePtr->replySockets, &queuePtr->replySpace,
	    queuePtr->numReplySockets, sizeof(ReplySocket))) {
	queuePtr->lastErrno = ENOMEM;
	return -1;
    }
    index = queuePtr->numReplySockets++;
    queuePtr->replySockets[index].asker = asker;
    queuePtr->replySockets[index].fd = fd;
    queuePtr->replySockets[index].slotPtr = NULL;
    WatchHangUp(queuePtr, &queuePtr->replySockets[index], 1);
    return index;
}

/*
 *----------------------------------------------------------------------
 *
 * FindReplySocket --
 *
 *	queueLock held: looks up a receiver's reply socket.
 *
 * Results:
 *	Its index in replySockets, or -1.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
FindReplySocket(
    Queue *queuePtr,
    uint64_t asker)
{
    int index;

    for (index = 0; index < queuePtr->numReplySockets; index++) {
	if (queuePtr->replySockets[index].asker == asker) {
	    return index;
	}
    }
    return -1;
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetReplySocket --
 *
 *	queueLock held: forgets a receiver (its process is gone, or it
 *	dropped its reply socket): closes the socket and drops its asks.
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
ForgetReplySocket(
    Queue *queuePtr,
    int index)
{
    uint64_t asker = queuePtr->replySockets[index].asker;
    int i, kept = 0;

    WatchHangUp(queuePtr, &queuePtr->replySockets[index], 0);
    close(queuePtr->replySockets[index].fd);
    queuePtr->numReplySockets--;
    memmove(queuePtr->replySockets + index,
	    queuePtr->replySockets + index + 1,
	    (queuePtr->numReplySockets - index) * sizeof(ReplySocket));
    for (i = 0; i < queuePtr->numAsks; i++) {
	if (queuePtr->asks[i] != asker) {
	    queuePtr->asks[kept++] = queuePtr->asks[i];
	}
    }
    queuePtr->numAsks = kept;
}

/*
 *----------------------------------------------------------------------
 *
 * WatchHangUp --
 *
 *	queueLock held: on Linux, while the accept thread runs, adds a reply
 *	socket to its epoll instance for hang-ups only (no events asked:
 *	EPOLLHUP and EPOLLERR always come), or removes it. (The portable
 *	build's WaitIdle polls every reply socket instead.)
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	If the kernel refuses (ENOMEM, ENOSPC: the user's watch limit), that
 *	socket is forgotten only when a send to it fails or a prune finds it
 *	hung up.
 *
 *----------------------------------------------------------------------
 */

static void
WatchHangUp(
    Queue *queuePtr,
    const ReplySocket *socketPtr,
    int watch)
{
#ifdef SS_LINUX
    struct epoll_event event;

    if (queuePtr->pollFd >= 0) {
	memset(&event, 0, sizeof(event));
	event.data.u64 = socketPtr->asker;
	epoll_ctl(queuePtr->pollFd, watch ? EPOLL_CTL_ADD : EPOLL_CTL_DEL,
		socketPtr->fd, &event);
    }
#else
    (void) queuePtr;
    (void) socketPtr;
    (void) watch;
#endif
}

/*
 *----------------------------------------------------------------------
 *
 * PruneReplySockets --
 *
 *	queueLock held: forgets the receivers whose reply socket was hung up
 *	(process gone, interpreter deleted), which would otherwise pile up
 *	here as workers come and go.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Sets pruneMark to twice what is left, so pruning costs O(1) per new
 *	receiver on average.
 *
 *----------------------------------------------------------------------
 */

static void
PruneReplySockets(
    Queue *queuePtr)
{
    int index = 0;

    while (index < queuePtr->numReplySockets) {
	struct pollfd pfd;

	pfd.fd = queuePtr->replySockets[index].fd;
	pfd.events = POLLOUT;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) >= 0 && (pfd.revents & (POLLHUP | POLLERR))) {
	    ForgetReplySocket(queuePtr, index);
	} else {
	    index++;
	}
    }
    queuePtr->pruneMark = (2 * index > PRUNE_MIN) ? 2 * index : PRUNE_MIN;
}

/*
 *----------------------------------------------------------------------
 *
 * GrowList --
 *
 *	Makes room for one more element in a malloc'd list (pending
 *	connections, asks, reply sockets) holding count of size bytes.
 *
 * Results:
 *	1, or 0 if there was no memory (nothing changed).
 *
 * Side effects:
 *	*listPtr and *spacePtr may change.
 *
 *----------------------------------------------------------------------
 */

static int
GrowList(
    void **listPtr,
    int *spacePtr,
    int count,
    size_t size)
{
    if (count == *spacePtr) {
	int space = (*spacePtr < LIST_MIN) ? LIST_MIN : 2 * *spacePtr;
	void *grown = realloc(*listPtr, space * size);

	if (grown == NULL) {
	    return 0;
	}
	*listPtr = grown;
	*spacePtr = space;
    }
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * AddPending --
 *
 *	queueLock held: puts a connection into the pending list at its
 *	place in accept order.
 *
 * Results:
 *	1, or 0 if there was no memory for it (nothing changed).
 *
 * Side effects:
 *	The list may grow.
 *
 *----------------------------------------------------------------------
 */

static int
AddPending(
    Queue *queuePtr,
    int fd,
    const Message *messagePtr)
{
    int i;

    if (!GrowList((void **) &queuePtr->pending, &queuePtr->pendingSpace,
	    queuePtr->numPending, sizeof(Pending))) {
	return 0;
    }
    i = queuePtr->numPending;
    while (i > 0
	    && queuePtr->pending[i-1].message.sequence > messagePtr->sequence) {
	queuePtr->pending[i] = queuePtr->pending[i-1];
	i--;
    }
    queuePtr->pending[i].fd = fd;
    queuePtr->pending[i].message = *messagePtr;
    queuePtr->numPending++;
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * RemoveFirstPending --
 *
 *	queueLock held: the first pending connection was handed over:
 *	closes this process's copy and removes it from the list.
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
RemoveFirstPending(
    Queue *queuePtr)
{
    close(queuePtr->pending[0].fd);
    queuePtr->numPending--;
    memmove(queuePtr->pending, queuePtr->pending + 1,
	    queuePtr->numPending * sizeof(Pending));
}

/*
 *----------------------------------------------------------------------
 *
 * DrainReady --
 *
 *	queueLock held, serving process: takes every connection the ready
 *	queue may hold back into the pending list, where they line up in
 *	accept order with the ones there.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Clears readyMayHold once the ready queue is empty. Stops early,
 *	leaving the rest queued, if there is no memory or no descriptor
 *	for the next one.
 *
 *----------------------------------------------------------------------
 */

static void
DrainReady(
    Queue *queuePtr)
{
    Message message;
    int fd;

    while (queuePtr->readyMayHold) {
	switch (TakeReady(queuePtr, &fd, &message)) {
	case 1:
	    if (!AddPending(queuePtr, fd, &message)) {
		/* Put it back behind the others rather than lose it. */
		queuePtr->lastErrno = ENOMEM;
		if (ancil_send_fd(queuePtr->readyFds[1], fd, &message,
			sizeof(message), MSG_DONTWAIT) < 0) {
		    queuePtr->lastErrno = errno;
		}
		close(fd);
		return;
	    }
	    break;
	case 0:
	    queuePtr->readyMayHold = 0;
	    return;
	default:
	    return;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * PendingAfterDrain --
 *
 *	Accept thread: when an ask is waiting and the ready queue may hold
 *	connections (some were put there since it was last found empty),
 *	takes them back into the pending list, so that no ask waits while a
 *	connection does.
 *
 * Results:
 *	1 if a connection is pending, else 0.
 *
 * Side effects:
 *	See DrainReady.
 *
 *----------------------------------------------------------------------
 */

static int
PendingAfterDrain(
    Queue *queuePtr)
{
    int pending;

    pthread_mutex_lock(&queueLock);
    if (queuePtr->numAsks > 0) {
	DrainReady(queuePtr);
    }
    pending = (queuePtr->numPending > 0);
    pthread_mutex_unlock(&queueLock);
    return pending;
}

/*
 *----------------------------------------------------------------------
 *
 * TakeReady --
 *
 *	queueLock held: takes the oldest connection from the ready queue of
 *	queuePtr without blocking. Several processes read that queue, so
 *	the message is taken in one recvmsg() (ancil_take_fd), and only
 *	after checking that this process has a free descriptor for it.
 *	Every descriptor this extension makes is made under queueLock, so
 *	only some other code's thread opening a descriptor at that very
 *	moment could take the room.
 *
 * Results:
 *	1 with *fdPtr and *messagePtr set; 0 if the queue is empty (or
 *	closed: the serving process is gone); -1 if this process has no
 *	room for a descriptor (the connection stays queued).
 *
 * Side effects:
 *	A malformed message is discarded (EBADMSG in lastErrno); any other
 *	error is recorded in lastErrno too.
 *
 *----------------------------------------------------------------------
 */

static int
TakeReady(
    Queue *queuePtr,
    int *fdPtr,
    Message *messagePtr)
{
    ssize_t got;
    int room;

    for (;;) {
	room = fcntl(queuePtr->readyFds[0], F_DUPFD_CLOEXEC, 0);
	if (room < 0) {
	    queuePtr->lastErrno = errno;
	    return -1;
	}
	close(room);
	got = ancil_take_fd(queuePtr->readyFds[0], fdPtr, messagePtr,
		sizeof(Message), MSG_DONTWAIT);
	if (got > 0 && IsConnection(got, *fdPtr, messagePtr)) {
	    return 1;
	}
	if (got > 0 || (got < 0 && errno == EBADMSG)) {
	    queuePtr->lastErrno = EBADMSG;
	    continue;
	}
	if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
	    queuePtr->lastErrno = errno;
	}
	return 0;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * HandOverFirstPending --
 *
 *	Accept thread (or 'close', with wait 0): sends the first pending
 *	connection (the caller made sure there is one) over the reply socket
 *	of the oldest ask, or, when no ask is waiting, into the ready queue.
 *	Asks of receivers that are gone are dropped. With wait, waits for an
 *	ask or for room in the ready queue, and retries when the kernel is
 *	short of resources (ETOOMANYREFS: too many descriptors in flight).
 *	Never drops the connection.
 *
 * Results:
 *	1 once handed over; 0 if not (told to stop, or no ask and no room
 *	without wait).
 *
 * Side effects:
 *	Closes this process's copy of the connection.
 *
 *----------------------------------------------------------------------
 */

static int
HandOverFirstPending(
    Queue *queuePtr,
    int wait)
{
    for (;;) {
	int error = 0, emptied = 1;

	pthread_mutex_lock(&queueLock);
	if (queuePtr->numAsks == 0) {
	    emptied = ReadQueue(queuePtr);
	}
	if (queuePtr->numAsks > 0) {
	    /*
	     * An ask raced a connection into the ready queue: that one is
	     * older than the first pending, so it goes first.
	     */

	    DrainReady(queuePtr);
	}
	while (queuePtr->numAsks > 0) {
	    int index = FindReplySocket(queuePtr, queuePtr->asks[0]);
	    int sent;

	    StampHanded(HandingTo(queuePtr, &queuePtr->replySockets[index]));
	    sent = ancil_send_fd(queuePtr->replySockets[index].fd,
		    queuePtr->pending[0].fd, &queuePtr->pending[0].message,
		    sizeof(Message), MSG_DONTWAIT);

	    error = (sent == 0) ? 0 : errno;
	    if (error == ETOOMANYREFS || error == ENOBUFS || error == ENOMEM
		    || error == EAGAIN || error == EWOULDBLOCK) {
		/*
		 * The ask stays first in line; retry shortly. (EAGAIN: the
		 * reply socket is full of connections its process has not
		 * read yet.)
		 */

		queuePtr->lastErrno = error;
		break;
	    }
	    if (sent == 0) {
		queuePtr->numAsks--;
		memmove(queuePtr->asks, queuePtr->asks + 1,
			queuePtr->numAsks * sizeof(uint64_t));
		RemoveFirstPending(queuePtr);
		pthread_mutex_unlock(&queueLock);
		return 1;
	    }

	    /*
	     * EPIPE and the like: the receiver is gone, and its asks with it.
	     */

	    ForgetReplySocket(queuePtr, index);
	    error = 0;
	}
	if (queuePtr->numAsks == 0 && emptied) {
	    /*
	     * Nobody is asking: leave it ready for the next 'client' to
	     * take, if the ready queue has room.
	     */

	    if (ancil_send_fd(queuePtr->readyFds[1], queuePtr->pending[0].fd,
		    &queuePtr->pending[0].message, sizeof(Message),
		    MSG_DONTWAIT) == 0) {
		RemoveFirstPending(queuePtr);
		queuePtr->readyMayHold = 1;
		pthread_mutex_unlock(&queueLock);
		return 1;
	    }
	    if (errno != EAGAIN && errno != EWOULDBLOCK) {
		error = errno;
		queuePtr->lastErrno = error;
	    }
	}
	pthread_mutex_unlock(&queueLock);

	if (!wait) {
	    return 0;
	}
	if (error != 0) {
	    if (!WaitFor(queuePtr, -1, 0, -1, 0, RETRY_MS)) {
		return 0;
	    }
	} else if (!emptied) {
	    if (!WaitFor(queuePtr, -1, 0, -1, 0, PAUSE_MS)) {
		return 0;
	    }
	} else if (!WaitFor(queuePtr, queuePtr->askFds[0], POLLIN,
		queuePtr->readyFds[1], POLLOUT, -1)) {
	    return 0;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * ToldToStop --
 *
 *	Accept thread: its stop pipe is readable. While DRAINING that only
 *	says 'close' closed the listener: the thread reads the pipe empty
 *	and goes on.
 *
 * Results:
 *	1 if the thread must stop, 0 if it goes on draining.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
ToldToStop(
    Queue *queuePtr)
{
    char bytes[16];
    int stop;

    pthread_mutex_lock(&queueLock);
    stop = (queuePtr->state != DRAINING);
    if (!stop) {
	/* Readable: read() returns at once. */
	if (read(queuePtr->wakeFds[0], bytes, sizeof(bytes)) < 0) {
	    queuePtr->lastErrno = errno;
	}
    }
    pthread_mutex_unlock(&queueLock);
    return stop;
}

/*
 *----------------------------------------------------------------------
 *
 * Drained --
 *
 *	Accept thread, nothing pending: whether it is DRAINING, then done.
 *
 * Results:
 *	1 if the thread ends now, else 0.
 *
 * Side effects:
 *	A drained thread closes what it waited with and detaches itself:
 *	nobody joins it, the queue is NOT_LISTENING.
 *
 *----------------------------------------------------------------------
 */

static int
Drained(
    Queue *queuePtr)
{
    int drained;

    pthread_mutex_lock(&queueLock);
    drained = (queuePtr->state == DRAINING);
    pthread_mutex_unlock(&queueLock);
    if (drained) {
	WaitReleasing(queuePtr);
    }
    pthread_mutex_lock(&queueLock);
    drained = (queuePtr->state == DRAINING);
    if (drained) {
	/*
	 * A last look at the queue: a connection released meanwhile is
	 * closed (WatchConnection), one returned is pending after all.
	 */

	ReadQueue(queuePtr);
	drained = (queuePtr->numPending == 0);
    }
    if (drained) {
	CloseFd(&queuePtr->pollFd);
	CloseFd(&queuePtr->wakeFds[0]);
	CloseFd(&queuePtr->wakeFds[1]);
	queuePtr->state = NOT_LISTENING;
	pthread_detach(pthread_self());
    }
    pthread_mutex_unlock(&queueLock);
    return drained;
}

/*
 *----------------------------------------------------------------------
 *
 * FinishDraining --
 *
 *	queueLock held: if the accept thread of queuePtr is still draining
 *	after 'close', stops and joins it (StopAccepting), so that the port
 *	can be listened on again, with what is still pending going first.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Releases and takes queueLock again while it joins.
 *
 *----------------------------------------------------------------------
 */

static void
FinishDraining(
    Queue *queuePtr)
{
    if (queuePtr->state == DRAINING) {
	queuePtr->state = STOPPING;
	pthread_mutex_unlock(&queueLock);
	StopAccepting(queuePtr, NULL);
	pthread_mutex_lock(&queueLock);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * StopAccepting --
 *
 *	Stops and joins the accept thread of queuePtr, then closes its
 *	listener, or with listenFdPtr not NULL hands it to the caller. The
 *	caller has set the state to STOPPING (ClaimListening,
 *	FinishDraining).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	New connections are refused, or wait in the kept listener's backlog.
 *	Connections accepted but not handed over yet go to the waiting asks
 *	now, or else to the ready queue, where the next 'client' takes them;
 *	those that do not fit stay pending and go first when accepting
 *	resumes.
 *
 *----------------------------------------------------------------------
 */

static void
StopAccepting(
    Queue *queuePtr,
    int *listenFdPtr)
{
    ssize_t written;

    do {
	written = write(queuePtr->wakeFds[1], "x", 1);
    } while (written < 0 && errno == EINTR);
    /* A new pipe always takes these one or two bytes. */
    pthread_join(queuePtr->thread, NULL);

    while (PendingAfterDrain(queuePtr)
	    && HandOverFirstPending(queuePtr, 0)) {
	/* Until no ask waits while a connection does. */
    }
    pthread_mutex_lock(&queueLock);
    if (listenFdPtr != NULL) {
	*listenFdPtr = queuePtr->listenFd;
	queuePtr->listenFd = -1;
    }
    CloseFd(&queuePtr->listenFd);
    CloseFd(&queuePtr->pollFd);
    CloseFd(&queuePtr->wakeFds[0]);
    CloseFd(&queuePtr->wakeFds[1]);
    queuePtr->state = NOT_LISTENING;
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * ClaimListening --
 *
 *	Finds the queue of the port in objPtr that this process listens on,
 *	and marks it STOPPING: 'close' and 'reexec' then stop its accept
 *	thread (StopAccepting).
 *
 * Results:
 *	TCL_OK with *queuePtrPtr set; or TCL_ERROR with a message and
 *	-errorcode {SOCKETSERVER NOTLISTENING port} or {TCL VALUE PORT}.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
ClaimListening(
    Tcl_Interp *interp,
    Tcl_Obj *objPtr,
    Queue **queuePtrPtr)
{
    Queue *queuePtr;
    int port;

    if (ParsePort(interp, objPtr, &port) != TCL_OK) {
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
    *queuePtrPtr = queuePtr;
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * ClientCmd --
 *
 *	$cmd client ?-port port? handler
 *	Asks for one connection from the queue. If one is ready, takes it
 *	and delivers it from the event loop. Otherwise sends an ask up the
 *	queue (SendAsk); the connection comes on the interpreter's reply
 *	socket for that queue.
 *
 * Results:
 *	TCL_OK with an empty result, or TCL_ERROR.
 *
 * Side effects:
 *	This process wakes when, and only when, its connection comes
 *	(ReceiveConnection) or the serving process is gone.
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
    Receiver *receiverPtr;
    Tcl_Size length;
    int fd, watch, error;

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
    if (forkGeneration != 0 && forkBreaksNotifier) {
	int major, minor;

	Tcl_GetVersion(&major, &minor, NULL, NULL);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: this process "
		"was forked, and Tcl %d.%d's event loop does not survive "
		"fork() (parent and child would share one epoll instance); "
		"start workers with \"::socketserver::socket spawn\" instead",
		queuePtr->port, major, minor));
	SetPortErrorCode(interp, "FORK", queuePtr->port);
	return TCL_ERROR;
    }
    receiverPtr = FindReceiver(dataPtr, queuePtr);
    if (receiverPtr != NULL && receiverPtr->state != NO_REQUEST) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"a request for a connection from port %d is already pending "
		"in this interpreter", queuePtr->port));
	SetPortErrorCode(interp, "PENDING", queuePtr->port);
	return TCL_ERROR;
    }
    if (receiverPtr == NULL) {
	receiverPtr = NewReceiver(dataPtr, queuePtr);
    }

    /*
     * Under the lock, so that a fork never copies a taken connection or a
     * reply socket that the child handler does not know about.
     */

    pthread_mutex_lock(&queueLock);
    fd = receiverPtr->keptFd;
    if (fd >= 0) {
	/* Its own connection, kept by 'release': no ask, no message. */
	receiverPtr->keptFd = -1;
	receiverPtr->takenMessage = receiverPtr->keptMessage;
	Tcl_CancelIdleCall(SendKeptWhenIdle, receiverPtr);
    }
    if (fd >= 0
	    || TakeReady(queuePtr, &fd, &receiverPtr->takenMessage) == 1) {
	/*
	 * A connection is ready: take it without asking, and deliver it
	 * from the event loop.
	 */

	ReceiverEvent *eventPtr = (ReceiverEvent *)
		ckalloc(sizeof(ReceiverEvent));

	receiverPtr->takenFd = fd;
	pthread_mutex_unlock(&queueLock);
	receiverPtr->state = TAKEN;
	eventPtr->header.proc = DeliverTaken;
	eventPtr->receiverPtr = receiverPtr;
	Tcl_QueueEvent((Tcl_Event *) eventPtr, TCL_QUEUE_TAIL);
    } else {
	watch = (receiverPtr->replyFd < 0);
	error = SendAsk(receiverPtr);
	pthread_mutex_unlock(&queueLock);
	if (error == EAGAIN || error == EWOULDBLOCK) {
	    WaitForRoom(queuePtr);
	    pthread_mutex_lock(&queueLock);
	    watch = (receiverPtr->replyFd < 0);
	    error = SendAsk(receiverPtr);
	    pthread_mutex_unlock(&queueLock);
	}
	if (error == EPIPE || error == ECONNREFUSED || error == ECONNRESET
		|| error == ENOTCONN) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't ask for a connection from port %d: the serving "
		    "process is gone", queuePtr->port));
	    SetPortErrorCode(interp, "CLOSED", queuePtr->port);
	    return TCL_ERROR;
	} else if (error == -1) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't ask for a connection from port %d: every "
		    "descriptor below %d is in use and Tcl's notifier can't "
		    "watch higher ones", queuePtr->port, FD_SETSIZE));
	    SetPortErrorCode(interp, "FDLIMIT", queuePtr->port);
	    return TCL_ERROR;
	} else if (error != 0) {
	    errno = error;
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't ask for a connection from port %d: %s",
		    queuePtr->port, Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	if (watch && (error = WatchReplySocket(receiverPtr)) != 0) {
	    /*
	     * The ask is up: the serving process finds the socket hung up
	     * and forgets it, with its ask.
	     */

	    CloseReplySocket(receiverPtr);
	    errno = error;
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't ask for a connection from port %d: %s",
		    queuePtr->port, Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	receiverPtr->state = ASKED;
    }
    MarkSlot(receiverPtr, SLOT_WAITING, NULL);
    if (receiverPtr->state == TAKEN) {
	/* It holds one until the event loop delivers it. */
	StampHanded(receiverPtr->slotPtr);
    }
    receiverPtr->handlerObj = handlerObj;
    Tcl_IncrRefCount(handlerObj);
    Tcl_ResetResult(interp);
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
 * WaitForRoom --
 *
 *	queueLock not held: waits, at most QUEUE_WAIT_MS, until the queue
 *	has room for a message. It is full only when asks come faster than
 *	the serving process reads them, or it does not read them at all.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static void
WaitForRoom(
    Queue *queuePtr)
{
    struct pollfd pfd;

    pfd.fd = queuePtr->askFds[1];
    pfd.events = POLLOUT;
    pfd.revents = 0;
    poll(&pfd, 1, QUEUE_WAIT_MS);
}

/*
 *----------------------------------------------------------------------
 *
 * SendAsk --
 *
 *	queueLock held: sends a receiver's ask up its queue. The first ask
 *	makes the reply socket (a SOCK_SEQPACKET socketpair) and carries its
 *	sending end; the serving process keeps that end for every later ask,
 *	which is a message of a few bytes and nothing else.
 *
 * Results:
 *	0 once sent; -1 if the reply socket's number is too high for Tcl's
 *	select()-based notifier; else an errno value (EPIPE and the like:
 *	the serving process is gone).
 *
 * Side effects:
 *	Sets replyFd on the first ask.
 *
 *----------------------------------------------------------------------
 */

static int
SendAsk(
    Receiver *receiverPtr)
{
    Message message;
    int pair[2] = {-1, -1}, error = 0;

    memset(&message, 0, sizeof(message));
    message.magic = MESSAGE_MAGIC;
    message.kind = KIND_ASK;
    message.asker = receiverPtr->id;
    if (receiverPtr->replyFd < 0) {
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
	    return errno;
	}
	if (pair[0] >= FD_SETSIZE && selectNotifier && !watchInThread) {
	    close(pair[0]);
	    close(pair[1]);
	    return -1;
	}
    }
    if (ancil_send_fd(receiverPtr->queuePtr->askFds[1], pair[1], &message,
	    sizeof(message), MSG_DONTWAIT) < 0) {
	error = errno;
	CloseFd(&pair[0]);
    }
    CloseFd(&pair[1]);
    if (pair[0] >= 0) {
	receiverPtr->replyFd = pair[0];
    }
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * WatchReplySocket --
 *
 *	Starts watching a receiver's new reply socket. Where Tcl's event
 *	loop waits in the interpreter's own thread (Tcl 9's epoll), a file
 *	handler does it. Tcl 8's notifier waits in a thread of its own
 *	instead, and every wait of a thread that has file handlers writes to
 *	that thread's trigger pipe, before and after: two or three wake-ups
 *	and select() calls of the notifier thread per connection, which cost
 *	more than all the rest of a hand-over. There a watcher thread of the
 *	receiver's waits (WatchReplies), and the interpreter's thread, with
 *	no file handler of ours, waits on its condition variable alone until
 *	Tcl_ThreadAlert wakes it.
 *
 * Results:
 *	0, or an errno value (nothing is watched then).
 *
 * Side effects:
 *	With a watcher: an epoll instance, an eventfd and a thread, which
 *	blocks every signal.
 *
 *----------------------------------------------------------------------
 */

static int
WatchReplySocket(
    Receiver *receiverPtr)
{
#ifdef SS_LINUX
    struct epoll_event event;
    sigset_t all, old;
    int error;

    if (watchInThread) {
	pthread_mutex_lock(&queueLock);
	receiverPtr->pollFd = epoll_create1(EPOLL_CLOEXEC);
	error = (receiverPtr->pollFd < 0) ? errno : 0;
	if (error == 0) {
	    receiverPtr->stopFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	    error = (receiverPtr->stopFd < 0) ? errno : 0;
	}
	pthread_mutex_unlock(&queueLock);
	if (error == 0) {
	    memset(&event, 0, sizeof(event));
	    event.events = EPOLLIN;
	    event.data.u32 = WATCH_STOP;
	    if (epoll_ctl(receiverPtr->pollFd, EPOLL_CTL_ADD,
		    receiverPtr->stopFd, &event) < 0) {
		error = errno;
	    }
	}
	if (error == 0) {
	    event.events = EPOLLIN | EPOLLONESHOT;
	    event.data.u32 = WATCH_REPLY;
	    if (epoll_ctl(receiverPtr->pollFd, EPOLL_CTL_ADD,
		    receiverPtr->replyFd, &event) < 0) {
		error = errno;
	    }
	}
	if (error == 0) {
	    sigfillset(&all);
	    pthread_sigmask(SIG_SETMASK, &all, &old);
	    pthread_mutex_lock(&queueLock);
	    error = pthread_create(&receiverPtr->watcher, NULL,
		    WatchReplies, receiverPtr);
	    receiverPtr->watching = (error == 0);
	    pthread_mutex_unlock(&queueLock);
	    pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (error != 0) {
	    pthread_mutex_lock(&queueLock);
	    CloseFd(&receiverPtr->pollFd);
	    CloseFd(&receiverPtr->stopFd);
	    pthread_mutex_unlock(&queueLock);
	}
	return error;
    }
#endif
    Tcl_CreateFileHandler(receiverPtr->replyFd, TCL_READABLE,
	    ReceiveConnection, receiverPtr);
    return 0;
}

#ifdef SS_LINUX
/*
 *----------------------------------------------------------------------
 *
 * WatchReplies --
 *
 *	A receiver's watcher thread: each time the reply socket becomes
 *	readable, queues a ReplyReadable event to the interpreter's thread
 *	and wakes it. The socket is one-shot in the epoll instance, so the
 *	thread then sleeps until the interpreter has read and re-armed it
 *	(RearmReplySocket). It never reads the socket (no descriptor ever
 *	arrives in this thread, which fork() could copy unrecorded) and
 *	never touches the interpreter.
 *
 * Results:
 *	NULL, once stopFd is readable.
 *
 * Side effects:
 *	Events are queued under queueLock, so that a fork (whose prepare
 *	handler takes it) never copies Tcl's event queue half changed.
 *
 *----------------------------------------------------------------------
 */

static void *
WatchReplies(
    void *clientData)
{
    Receiver *receiverPtr = clientData;
    struct epoll_event event;
    ReceiverEvent *eventPtr;
    int pollFd;

    /*
     * Whoever stops this thread may close the receiver's descriptors
     * before it has seen the stop: keep its own copy of the number.
     */

    pthread_mutex_lock(&queueLock);
    pollFd = receiverPtr->pollFd;
    pthread_mutex_unlock(&queueLock);
    for (;;) {
	if (epoll_wait(pollFd, &event, 1, -1) < 1) {
	    /* Signals are blocked: only a shortage of memory gets here. */
	    struct timespec pause = {0, PAUSE_MS * 1000000L};

	    nanosleep(&pause, NULL);
	    continue;
	}
	if (event.data.u32 == WATCH_STOP) {
	    return NULL;
	}
	eventPtr = (ReceiverEvent *) ckalloc(sizeof(ReceiverEvent));
	eventPtr->header.proc = ReplyReadable;
	eventPtr->receiverPtr = receiverPtr;
	pthread_mutex_lock(&queueLock);
	Tcl_ThreadQueueEvent(receiverPtr->thread, (Tcl_Event *) eventPtr,
		TCL_QUEUE_TAIL);
	Tcl_ThreadAlert(receiverPtr->thread);
	pthread_mutex_unlock(&queueLock);
    }
}
#endif

/*
 *----------------------------------------------------------------------
 *
 * ReplyReadable --
 *
 *	Event handler, queued by a watcher thread: the reply socket is
 *	readable. A file event, like a file handler's.
 *
 * Results:
 *	1 once handled, 0 to stay queued.
 *
 * Side effects:
 *	See ReceiveConnection.
 *
 *----------------------------------------------------------------------
 */

static int
ReplyReadable(
    Tcl_Event *evPtr,
    int flags)
{
    if (!(flags & TCL_FILE_EVENTS)) {
	return 0;
    }
    ReceiveConnection(((ReceiverEvent *) evPtr)->receiverPtr, TCL_READABLE);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * RearmReplySocket --
 *
 *	With a watcher thread: after a read, has it watch the reply socket
 *	again. (A file handler needs nothing.)
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	If a message is waiting already, the watcher wakes at once.
 *
 *----------------------------------------------------------------------
 */

static void
RearmReplySocket(
    Receiver *receiverPtr)
{
#ifdef SS_LINUX
    struct epoll_event event;

    if (receiverPtr->pollFd >= 0) {
	memset(&event, 0, sizeof(event));
	event.events = EPOLLIN | EPOLLONESHOT;
	event.data.fd = receiverPtr->replyFd;
	if (epoll_ctl(receiverPtr->pollFd, EPOLL_CTL_MOD, receiverPtr->replyFd,
		&event) < 0) {
	    /*
	     * Only ENOMEM is possible: look again shortly, as after a
	     * shortage of descriptors.
	     */

	    if (receiverPtr->retryTimer == NULL) {
		receiverPtr->retryTimer = Tcl_CreateTimerHandler(PAUSE_MS,
			RetryReceive, receiverPtr);
	    }
	}
    }
#else
    (void) receiverPtr;
#endif
}

/*
 *----------------------------------------------------------------------
 *
 * ReceiveConnection --
 *
 *	File handler: a receiver's reply socket is readable.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	A connection goes to the request (FinishRequest), or back up the
 *	queue if there is none. At end of file (the serving process is gone)
 *	or on an error the reply socket is closed, and a request ends with a
 *	background error; so does a request on a malformed message.
 *
 *----------------------------------------------------------------------
 */

static void
ReceiveConnection(
    ClientData clientData,
    int mask)
{
    Receiver *receiverPtr = clientData;
    Queue *queuePtr = receiverPtr->queuePtr;
    Tcl_Interp *interp = receiverPtr->dataPtr->interp;
    Message message;
    ssize_t got;
    int fd, error;

    (void) mask;
    if (DropIfStale(receiverPtr)) {
	return;
    }
    got = ancil_recv_fd(receiverPtr->replyFd, &fd, &message, sizeof(message),
	    MSG_DONTWAIT);
    error = (got < 0) ? errno : 0;
    if (error == EMFILE) {
	/*
	 * No room for the descriptor: it stays queued. Look again later
	 * rather than be woken for it over and over.
	 */

	if (!watchInThread) {
	    Tcl_DeleteFileHandler(receiverPtr->replyFd);
	}
	receiverPtr->retryTimer = Tcl_CreateTimerHandler(PAUSE_MS,
		RetryReceive, receiverPtr);
	return;
    }
    if (got > 0 || error == EBADMSG || error == EAGAIN
	    || error == EWOULDBLOCK) {
	/*
	 * Before the handler runs, which may delete the receiver: more may
	 * be waiting, or come.
	 */

	RearmReplySocket(receiverPtr);
	if (got < 0 && error != EBADMSG) {
	    return;
	}
	if (got > 0 && IsConnection(got, fd, &message)) {
	    if (receiverPtr->state == ASKED) {
		FinishRequest(receiverPtr, fd, &message);
	    } else {
		/* Sent for an ask withdrawn too late: someone else's. */
		pthread_mutex_lock(&queueLock);
		ReturnConnections(queuePtr, fd, &message);
		pthread_mutex_unlock(&queueLock);
	    }
	} else if (receiverPtr->state == ASKED) {
	    RefuseRequest(receiverPtr, Tcl_ObjPrintf(
		    "discarded a malformed message from the serving process "
		    "of port %d", queuePtr->port), "BADMESSAGE");
	} else {
	    pthread_mutex_lock(&queueLock);
	    queuePtr->lastErrno = EBADMSG;
	    pthread_mutex_unlock(&queueLock);
	}
	return;
    }

    /*
     * End of file or an error: this socket is done with. A later ask
     * makes a new one (and finds out whether the serving process is
     * gone).
     */

    CloseReplySocket(receiverPtr);
    if (receiverPtr->state != ASKED) {
	return;
    }
    if (got == 0) {
	RefuseRequest(receiverPtr, Tcl_ObjPrintf(
		"the queue of port %d is closed: the serving process is gone",
		queuePtr->port), "CLOSED");
    } else {
	errno = error;
	RefuseRequest(receiverPtr, Tcl_ObjPrintf(
		"couldn't receive a connection from port %d: %s",
		queuePtr->port, Tcl_PosixError(interp)), NULL);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * RetryReceive --
 *
 *	Timer handler: watches a reply socket again after there was no room
 *	for a connection's descriptor.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See ReceiveConnection.
 *
 *----------------------------------------------------------------------
 */

static void
RetryReceive(
    ClientData clientData)
{
    Receiver *receiverPtr = clientData;

    receiverPtr->retryTimer = NULL;
    if (DropIfStale(receiverPtr)) {
	return;
    }
    if (watchInThread) {
	RearmReplySocket(receiverPtr);
    } else {
	Tcl_CreateFileHandler(receiverPtr->replyFd, TCL_READABLE,
		ReceiveConnection, receiverPtr);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * DeliverTaken --
 *
 *	Event handler: delivers the ready connection that 'client' took.
 *	It counts as a file event, so 'update idletasks' leaves it queued.
 *
 * Results:
 *	1 once handled, 0 to stay queued.
 *
 * Side effects:
 *	See FinishRequest.
 *
 *----------------------------------------------------------------------
 */

static int
DeliverTaken(
    Tcl_Event *evPtr,
    int flags)
{
    Receiver *receiverPtr = ((ReceiverEvent *) evPtr)->receiverPtr;
    Message message;
    int fd;

    if (!(flags & TCL_FILE_EVENTS)) {
	return 0;
    }
    if (DropIfStale(receiverPtr)) {
	return 1;
    }
    pthread_mutex_lock(&queueLock);
    fd = receiverPtr->takenFd;
    receiverPtr->takenFd = -1;
    pthread_mutex_unlock(&queueLock);
    message = receiverPtr->takenMessage;
    FinishRequest(receiverPtr, fd, &message);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * IsEventOf --
 *
 *	Tcl_DeleteEvents predicate: clientData points to a ReceiverEvent
 *	whose proc and receiver an event must have.
 *
 * Results:
 *	1 if evPtr is such an event, else 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
IsEventOf(
    Tcl_Event *evPtr,
    ClientData clientData)
{
    ReceiverEvent *wantedPtr = clientData;

    return (evPtr->proc == wantedPtr->header.proc
	    && ((ReceiverEvent *) evPtr)->receiverPtr
		== wantedPtr->receiverPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * DeleteEventsOf --
 *
 *	Deletes the queued events of one kind (DeliverTaken, ReplyReadable)
 *	for a receiver.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See above. (While Tcl runs an event its proc is NULL, so the one
 *	running is left alone.)
 *
 *----------------------------------------------------------------------
 */

static void
DeleteEventsOf(
    Receiver *receiverPtr,
    Tcl_EventProc *proc)
{
    ReceiverEvent wanted;

    wanted.header.proc = proc;
    wanted.receiverPtr = receiverPtr;
    Tcl_DeleteEvents(IsEventOf, &wanted);
}

/*
 *----------------------------------------------------------------------
 *
 * IsConnection --
 *
 *	Checks a message received on a reply socket or from the ready
 *	queue: got bytes, one descriptor fd.
 *
 * Results:
 *	1 if it is a well-formed connection, else 0 (and fd, if any, is
 *	closed).
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
IsConnection(
    ssize_t got,
    int fd,
    const Message *messagePtr)
{
    if (got == (ssize_t) sizeof(Message) && fd >= 0
	    && messagePtr->magic == MESSAGE_MAGIC
	    && messagePtr->kind == KIND_CONNECTION
	    && messagePtr->addrLen <= sizeof(messagePtr->addr)
	    && (messagePtr->addr.ss_family == AF_INET
		    || messagePtr->addr.ss_family == AF_INET6)) {
	return 1;
    }
    if (fd >= 0) {
	close(fd);
    }
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * FinishRequest --
 *
 *	Ends a receiver's request, the one way every request ends: with its
 *	connection (fd >= 0), which goes to the handler, or without one
 *	(withdrawn or refused, fd -1).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	With a connection: counts it in 'received' and calls the handler
 *	(DeliverConnection), which may ask again, or delete the interpreter
 *	and the receiver with it: callers do not touch the receiver after.
 *
 *----------------------------------------------------------------------
 */

static void
FinishRequest(
    Receiver *receiverPtr,
    int fd,
    const Message *messagePtr)
{
    Tcl_Interp *interp = receiverPtr->dataPtr->interp;
    Queue *queuePtr = receiverPtr->queuePtr;
    Tcl_Obj *handlerObj = receiverPtr->handlerObj;

    if (receiverPtr->state == TAKEN) {
	DeleteEventsOf(receiverPtr, DeliverTaken);
    }
    receiverPtr->state = NO_REQUEST;
    receiverPtr->handlerObj = NULL;
    MarkSlot(receiverPtr, (fd >= 0 ? SLOT_SERVING : SLOT_IDLE), messagePtr);
    if (fd >= 0) {
	pthread_mutex_lock(&queueLock);
	queuePtr->received++;
	pthread_mutex_unlock(&queueLock);
	DeliverConnection(interp, handlerObj, queuePtr, fd, messagePtr);
    }
    Tcl_DecrRefCount(handlerObj);
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
 *	error handler, and then the channel is closed, as Tcl's own
 *	'socket -server' does with a failing accept callback.
 *
 *----------------------------------------------------------------------
 */

static void
DeliverConnection(
    Tcl_Interp *interp,
    Tcl_Obj *handlerObj,
    Queue *queuePtr,
    int fd,
    const Message *messagePtr)
{
    static const int stdTypes[3] = {TCL_STDIN, TCL_STDOUT, TCL_STDERR};
    char host[NI_MAXHOST], service[NI_MAXSERV];
    int i, code;
    Tcl_Channel chan;
    Tcl_Obj *cmdObj;
    Delivered *deliveredPtr, **firstPtrPtr;

    if (getnameinfo((const struct sockaddr *) &messagePtr->addr,
	    messagePtr->addrLen, host, sizeof(host), service,
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
    deliveredPtr = (Delivered *) ckalloc(sizeof(Delivered));
    deliveredPtr->chan = chan;
    deliveredPtr->queuePtr = queuePtr;
    deliveredPtr->message = *messagePtr;
    firstPtrPtr = Tcl_GetThreadData(&deliveredKey, sizeof(Delivered *));
    deliveredPtr->nextPtr = *firstPtrPtr;
    *firstPtrPtr = deliveredPtr;
    Tcl_CreateCloseHandler(chan, ForgetDelivered, deliveredPtr);

    /*
     * As Tcl's own 'socket -server' does: an extra reference keeps the
     * channel alive while the handler runs, even if it closes it.
     */

    Tcl_RegisterChannel(NULL, chan);

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
	Tcl_AppendObjToErrorInfo(interp, Tcl_ObjPrintf(
		"\n    (socketserver handler for a connection from port %d)",
		queuePtr->port));
	Tcl_BackgroundException(interp, code);

	/*
	 * A failed handler must not leave its client waiting: close the
	 * channel, unless the handler already did (then it is no longer
	 * registered in interp and this does nothing).
	 */

	Tcl_UnregisterChannel(interp, chan);
    }
    Tcl_UnregisterChannel(NULL, chan);
    Tcl_DecrRefCount(cmdObj);
    Tcl_Release(interp);
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetDelivered --
 *
 *	Close handler of a delivered connection's channel: it can no longer
 *	be released.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Frees its Delivered.
 *
 *----------------------------------------------------------------------
 */

static void
ForgetDelivered(
    ClientData clientData)
{
    Delivered *deliveredPtr = clientData;
    Delivered **linkPtr = Tcl_GetThreadData(&deliveredKey,
	    sizeof(Delivered *));

    while (*linkPtr != deliveredPtr) {
	linkPtr = &(*linkPtr)->nextPtr;
    }
    *linkPtr = deliveredPtr->nextPtr;
    ckfree((char *) deliveredPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * ReleaseCmd --
 *
 *	$cmd release channel
 *	A handler that answered a request gives its connection back to the
 *	serving process instead of closing it: sent up the queue
 *	(KIND_RELEASE), it is watched there and handed over again, to
 *	whichever receiver asks first, when its client sends the next
 *	request (ReadQueue, ServeWatched). Refused, the channel untouched,
 *	for a channel that is not a connection from a queue, has a
 *	transformation stacked on it, or holds unread input or unflushed
 *	output: what Tcl buffered would be lost.
 *
 * Results:
 *	TCL_OK with an empty result, or TCL_ERROR: -errorcode {SOCKETSERVER
 *	NOTCONNECTION channel}, {SOCKETSERVER STACKED|UNREAD|UNFLUSHED port},
 *	or POSIX if it could not be sent (the serving process is gone).
 *
 * Side effects:
 *	Unless refused, the channel is closed in interp (as by 'close'),
 *	whether or not the connection could be sent: one that could not is
 *	closed, as its client would see from any server that went away. So
 *	is one released after the serving process closed the port.
 *	While no connection waits for a worker, the next request may come
 *	within LINGER_US (Linger): then the connection is kept for this
 *	interpreter's next 'client', which takes it without a round trip
 *	through the serving process; when the event loop is next idle
 *	without one, it goes up the queue after all (SendKept).
 *
 *----------------------------------------------------------------------
 */

static int
ReleaseCmd(
    InterpData *dataPtr,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Channel chan;
    Delivered *deliveredPtr;
    Receiver *receiverPtr;
    Message message;
    ClientData handle;
    const char *name, *code = NULL;
    Queue *queuePtr;
    int error, fd, kept;

    if (objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "channel");
	return TCL_ERROR;
    }
    name = Tcl_GetString(objv[2]);
    chan = Tcl_GetChannel(interp, name, NULL);
    if (chan == NULL) {
	return TCL_ERROR;
    }
    for (deliveredPtr = *(Delivered **) Tcl_GetThreadData(&deliveredKey,
	    sizeof(Delivered *)); deliveredPtr != NULL
	    && deliveredPtr->chan != chan; deliveredPtr = deliveredPtr->nextPtr) {
    }
    if (deliveredPtr == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": not a "
		"connection from a socketserver queue", name));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOTCONNECTION", name, NULL);
	return TCL_ERROR;
    }
    queuePtr = deliveredPtr->queuePtr;
    if (Tcl_GetTopChannel(chan) != chan) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": a "
		"transformation is stacked on it", name));
	code = "STACKED";
    } else if (Tcl_InputBuffered(chan) > 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": it "
		"holds %d bytes of input not read yet", name,
		(int) Tcl_InputBuffered(chan)));
	code = "UNREAD";
    } else if (Tcl_OutputBuffered(chan) > 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": it "
		"holds %d bytes of output not flushed yet", name,
		(int) Tcl_OutputBuffered(chan)));
	code = "UNFLUSHED";
    }
    if (code != NULL) {
	SetPortErrorCode(interp, code, queuePtr->port);
	return TCL_ERROR;
    }

    /*
     * The descriptor goes up the queue, or is kept for this interpreter's
     * next request (Linger); either way the channel keeps only a dummy
     * (DetachConnection), which its close below ends. After 'close' of
     * the port (error -1), the channel's close ends the connection.
     */

    Tcl_GetChannelHandle(chan, TCL_READABLE, &handle);
    fd = (int) (intptr_t) handle;
    message = deliveredPtr->message;
    receiverPtr = FindReceiver(dataPtr, queuePtr);
    kept = 0;
    if (__atomic_load_n(&TRAILER(queuePtr->board)->closed,
	    __ATOMIC_ACQUIRE)) {
	/* Nobody would serve the next request: no wait for it. */
	error = -1;
    } else {
	if (receiverPtr != NULL && receiverPtr->state == NO_REQUEST
		&& receiverPtr->keptFd < 0 && Linger(queuePtr, fd)) {
	    pthread_mutex_lock(&queueLock);
	    receiverPtr->keptFd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	    pthread_mutex_unlock(&queueLock);
	    kept = (receiverPtr->keptFd >= 0 && DetachConnection(fd) == 0);
	    if (kept) {
		receiverPtr->keptMessage = message;
		Tcl_DoWhenIdle(SendKeptWhenIdle, receiverPtr);
	    } else {
		pthread_mutex_lock(&queueLock);
		CloseFd(&receiverPtr->keptFd);
		pthread_mutex_unlock(&queueLock);
	    }
	}
	error = kept ? 0 : SendReleased(queuePtr, fd, &message, 1);
	if (!kept && error == 0) {
	    error = DetachConnection(fd);
	}
    }
    Tcl_DeleteCloseHandler(chan, ForgetDelivered, deliveredPtr);
    ForgetDelivered(deliveredPtr);
    Tcl_UnregisterChannel(interp, chan);
    if (error > 0) {
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("couldn't release \"%s\" to "
		"the serving process of port %d: %s (the connection is "
		"closed)", name, queuePtr->port, Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * DetachConnection --
 *
 *	'release': the connection has gone up the queue (or is kept): its
 *	descriptor in the channel is replaced by one of a socketpair of no
 *	use, so that closing the channel touches only that. Tcl 9 closes a
 *	socket channel with a shutdown() of its reading side first, which
 *	would end the connection for whoever holds it now.
 *
 * Results:
 *	0, or an errno value.
 *
 * Side effects:
 *	Makes the socketpair at the first call (releaseDummyFd).
 *
 *----------------------------------------------------------------------
 */

static int
DetachConnection(
    int fd)
{
    int error = 0;

    /*
     * First out of the notifier: Tcl 9's would later take the dummy out
     * of its epoll instance, where it never was, and panic.
     */

    Tcl_DeleteFileHandler(fd);
    pthread_mutex_lock(&queueLock);
    if (releaseDummyFd < 0) {
	int pair[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
	    error = errno;
	} else {
	    /* A shutdown() of one end needs no peer. */
	    close(pair[1]);
	    releaseDummyFd = pair[0];
	}
    }
    if (error == 0 && dup3(releaseDummyFd, fd, O_CLOEXEC) < 0) {
	error = errno;
    }
    pthread_mutex_unlock(&queueLock);
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * SendReleased --
 *
 *	Sends a released connection up the queue, unless the serving
 *	process has closed the port: between its look at the scoreboard's
 *	closed and the end of its send it counts itself in releasing, which
 *	'close' waits to see at 0 before it reads the queue a last time
 *	(WaitReleasing), so that no release is left unread. With wait, a full
 *	queue is waited for once.
 *
 * Results:
 *	0 if sent, -1 if the port is closed (not sent), else an errno value.
 *
 * Side effects:
 *	None here: the caller closes its copy.
 *
 *----------------------------------------------------------------------
 */

static int
SendReleased(
    Queue *queuePtr,
    int fd,
    Message *messagePtr,
    int wait)
{
    BoardTrailer *trailerPtr = TRAILER(queuePtr->board);
    int tries, error = 0;

    messagePtr->kind = KIND_RELEASE;
    for (tries = 0; tries < 2; tries++) {
	__atomic_add_fetch(&trailerPtr->releasing, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&trailerPtr->closed, __ATOMIC_SEQ_CST)) {
	    error = -1;
	} else {
	    error = (ancil_send_fd(queuePtr->askFds[1], fd, messagePtr,
		    sizeof(Message), MSG_DONTWAIT) == 0) ? 0 : errno;
	}
	__atomic_sub_fetch(&trailerPtr->releasing, 1, __ATOMIC_SEQ_CST);
	if (wait && tries == 0 && (error == EAGAIN || error == EWOULDBLOCK)) {
	    WaitForRoom(queuePtr);
	} else {
	    break;
	}
    }
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * WaitReleasing --
 *
 *	'close' (or a draining accept thread at its end), after marking the
 *	scoreboard closed: waits until no worker is in the middle of sending
 *	a released connection (SendReleased), at most RELEASING_WAIT_MS.
 *	The queue's last read then finds every release sent.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	May sleep.
 *
 *----------------------------------------------------------------------
 */

static void
WaitReleasing(
    Queue *queuePtr)
{
    struct timespec pause = {0, 1000000L};
    int ms;

    for (ms = 0; ms < RELEASING_WAIT_MS && __atomic_load_n(
	    &TRAILER(queuePtr->board)->releasing, __ATOMIC_SEQ_CST) > 0;
	    ms++) {
	nanosleep(&pause, NULL);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * Linger --
 *
 *	'release': while no connection waits for a worker (the ready queue
 *	is empty), waits up to LINGER_US for the connection's next request,
 *	as a client that talks fast sends it: a worker that would be idle
 *	meanwhile holds nobody up. A connection that comes into the ready
 *	queue ends the wait.
 *
 * Results:
 *	1 if the next request is there and nobody waits, else 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
Linger(
    Queue *queuePtr,
    int fd)
{
    struct pollfd fds[2];
    struct timespec wait = {0, LINGER_US * 1000L};
    int readyBytes = 0;

    if (ioctl(queuePtr->readyFds[0], FIONREAD, &readyBytes) < 0
	    || readyBytes > 0) {
	return 0;
    }
    fds[0].fd = fd;
    fds[1].fd = queuePtr->readyFds[0];
    fds[0].events = fds[1].events = POLLIN;
    fds[0].revents = fds[1].revents = 0;
    return (ppoll(fds, 2, &wait, NULL) > 0 && fds[1].revents == 0
	    && (fds[0].revents & POLLIN)
	    && Readiness(fd, TRAILER(queuePtr->board)) == CONN_HAS_DATA);
}

/*
 *----------------------------------------------------------------------
 *
 * SendKept --
 *
 *	queueLock held: a connection that 'release' kept for this receiver
 *	goes up the queue after all, as released (its request is there: the
 *	serving process hands it over at once), because the receiver did not
 *	ask in time, or is going away.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Closes this process's copy; one that can't be sent is closed, with
 *	the reason in lastErrno unless the port was closed.
 *
 *----------------------------------------------------------------------
 */

static void
SendKept(
    Receiver *receiverPtr)
{
    Queue *queuePtr = receiverPtr->queuePtr;
    Message message = receiverPtr->keptMessage;

    int error;

    if (receiverPtr->keptFd < 0) {
	return;
    }
    error = SendReleased(queuePtr, receiverPtr->keptFd, &message, 0);
    if (error > 0) {
	queuePtr->lastErrno = error;
    }
    CloseFd(&receiverPtr->keptFd);
}

/*
 *----------------------------------------------------------------------
 *
 * SendKeptWhenIdle --
 *
 *	Idle handler set by 'release' when it kept a connection: the
 *	handler did not ask again (SendKept).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See SendKept.
 *
 *----------------------------------------------------------------------
 */

static void
SendKeptWhenIdle(
    ClientData clientData)
{
    pthread_mutex_lock(&queueLock);
    SendKept(clientData);
    pthread_mutex_unlock(&queueLock);
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
 *	The interpreter's background error handler runs.
 *
 *----------------------------------------------------------------------
 */

static void
RefuseRequest(
    Receiver *receiverPtr,
    Tcl_Obj *messageObj,
    const char *code)
{
    Tcl_Interp *interp = receiverPtr->dataPtr->interp;
    int port = receiverPtr->queuePtr->port;

    FinishRequest(receiverPtr, -1, NULL);
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
 * WithdrawRequest --
 *
 *	'cancel': withdraws a receiver's request without losing a
 *	connection. One that has come already (taken from the ready queue,
 *	or waiting on the reply socket) is delivered instead. Otherwise a
 *	KIND_WITHDRAW takes the ask back; if the serving process sent a
 *	connection for it before reading that, the connection comes on the
 *	reply socket later and goes back up the queue (ReceiveConnection).
 *
 * Results:
 *	1 if the request was withdrawn, 0 if a connection had come and its
 *	handler has run.
 *
 * Side effects:
 *	See FinishRequest.
 *
 *----------------------------------------------------------------------
 */

static int
WithdrawRequest(
    Receiver *receiverPtr)
{
    Queue *queuePtr = receiverPtr->queuePtr;
    Message message;
    ssize_t got;
    int fd = -1, error, tries;

    if (receiverPtr->state == TAKEN) {
	pthread_mutex_lock(&queueLock);
	fd = receiverPtr->takenFd;
	receiverPtr->takenFd = -1;
	pthread_mutex_unlock(&queueLock);
	message = receiverPtr->takenMessage;
    } else if (receiverPtr->retryTimer == NULL) {
	got = ancil_recv_fd(receiverPtr->replyFd, &fd, &message,
		sizeof(message), MSG_DONTWAIT);
	if (got <= 0 || !IsConnection(got, fd, &message)) {
	    /* End of file and errors are the file handler's to see. */
	    fd = -1;
	}
    }
    if (fd < 0) {
	memset(&message, 0, sizeof(message));
	message.magic = MESSAGE_MAGIC;
	message.kind = KIND_WITHDRAW;
	message.asker = receiverPtr->id;
	for (tries = 0; tries < 2; tries++) {
	    /* No descriptor: no need for the lock. */
	    error = (ancil_send_fd(queuePtr->askFds[1], -1, &message,
		    sizeof(message), MSG_DONTWAIT) == 0) ? 0 : errno;
	    if (tries == 0 && (error == EAGAIN || error == EWOULDBLOCK)) {
		WaitForRoom(queuePtr);
	    } else {
		break;
	    }
	}
	if (error != 0 && error != EPIPE && error != ECONNREFUSED) {
	    /*
	     * The ask stays (its connection will come back up the queue);
	     * with the serving process gone there is nothing to withdraw.
	     */

	    pthread_mutex_lock(&queueLock);
	    queuePtr->lastErrno = error;
	    pthread_mutex_unlock(&queueLock);
	}
    }
    FinishRequest(receiverPtr, fd, &message);
    return (fd < 0);
}

/*
 *----------------------------------------------------------------------
 *
 * ReturnConnections --
 *
 *	queueLock held: sends a connection that this process will not serve
 *	up the queue, to be handed over again at its place in accept order;
 *	and behind it every connection that waits in the ready queue, where
 *	the next 'client' anywhere would take them before it: the serving
 *	process puts them all back in accept order.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Closes this process's copies. If the serving process is gone or its
 *	queue is full, a connection is lost and lastErrno says why.
 *
 *----------------------------------------------------------------------
 */

static void
ReturnConnections(
    Queue *queuePtr,
    int fd,
    const Message *messagePtr)
{
    Message message = *messagePtr;

    do {
	message.kind = KIND_RETURN;
	if (ancil_send_fd(queuePtr->askFds[1], fd, &message, sizeof(Message),
		MSG_DONTWAIT) < 0) {
	    queuePtr->lastErrno = errno;
	}
	close(fd);
    } while (TakeReady(queuePtr, &fd, &message) == 1);
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
    Receiver *receiverPtr;

    if (objc != 2 && objc != 4) {
	Tcl_WrongNumArgs(interp, 2, objv, "?-port port?");
	return TCL_ERROR;
    }
    if (LookupQueue(interp, objc, objv, 2, &queuePtr) != TCL_OK) {
	return TCL_ERROR;
    }
    receiverPtr = FindReceiver(dataPtr, queuePtr);
    Tcl_SetObjResult(interp, Tcl_NewBooleanObj(receiverPtr != NULL
	    && receiverPtr->state != NO_REQUEST
	    && WithdrawRequest(receiverPtr)));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * MakeBoard --
 *
 *	Makes a queue's scoreboard: a memfd (in the portable build a file in
 *	/tmp, unlinked at once) of BOARD_BYTES zeroes, mapped shared.
 *
 * Results:
 *	The mapping, with its descriptor (close-on-exec) in *fdPtr; or NULL
 *	with errno set and nothing left open.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static Slot *
MakeBoard(
    int *fdPtr)
{
    Slot *board;
    int fd, error;

#ifdef SS_LINUX
    fd = memfd_create("socketserver-board", MFD_CLOEXEC);
#else
    /*
     * Not shm_open(): a chroot or container may have no /dev/shm.
     */

    char path[] = "/tmp/socketserver-boardXXXXXX";

    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0 && unlink(path) < 0) {
	error = errno;
	close(fd);
	errno = error;
	return NULL;
    }
#endif
    if (fd < 0) {
	return NULL;
    }
    if (ftruncate(fd, (off_t) BOARD_BYTES) < 0
	    || (board = MapBoard(fd)) == NULL) {
	error = errno;
	close(fd);
	errno = error;
	return NULL;
    }
    *fdPtr = fd;
    return board;
}

/*
 *----------------------------------------------------------------------
 *
 * MapBoard --
 *
 *	Maps the scoreboard in descriptor fd, shared.
 *
 * Results:
 *	The mapping, or NULL with errno set.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static Slot *
MapBoard(
    int fd)
{
    void *board = mmap(NULL, BOARD_BYTES, PROT_READ | PROT_WRITE,
	    MAP_SHARED, fd, 0);

    return (board == MAP_FAILED) ? NULL : (Slot *) board;
}

/*
 *----------------------------------------------------------------------
 *
 * ClaimSlot --
 *
 *	Gives a receiver a free slot of its queue's scoreboard.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	receiverPtr->slotPtr is the slot, marked SLOT_IDLE with nothing
 *	served; or NULL if every slot is taken (the receiver then works
 *	without one, and 'info' does not list it).
 *
 *----------------------------------------------------------------------
 */

static void
ClaimSlot(
    Receiver *receiverPtr)
{
    Slot *board = receiverPtr->queuePtr->board;
    int i, pass;

    receiverPtr->slotPtr = NULL;
    for (pass = 0; pass < 2; pass++) {
	for (i = 0; i < BOARD_SLOTS; i++) {
	    uint64_t owner = __atomic_load_n(&board[i].asker,
		    __ATOMIC_RELAXED);

	    /*
	     * A free slot; or, once there is none, one whose process is gone
	     * and was never read so by anyone.
	     */

	    if ((owner == 0 || (pass == 1 && kill((pid_t) (owner >> 32), 0) < 0
		    && errno == ESRCH))
		    && __atomic_compare_exchange_n(&board[i].asker, &owner,
			receiverPtr->id, 0, __ATOMIC_ACQ_REL,
			__ATOMIC_RELAXED)) {
		receiverPtr->slotPtr = &board[i];
		__atomic_store_n(&board[i].served, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&board[i].handed, 0, __ATOMIC_RELAXED);
		MarkSlot(receiverPtr, SLOT_IDLE, NULL);
		return;
	    }
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * MarkSlot --
 *
 *	Writes what the receiver now does into its slot: the state, when it
 *	began, and for SLOT_SERVING the peer of the connection in
 *	*messagePtr, counted as served. A slot freed under the receiver
 *	(its reply socket seen hung up) is claimed again first.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See above. Two stores of seq around the fields (see Slot).
 *
 *----------------------------------------------------------------------
 */

static void
MarkSlot(
    Receiver *receiverPtr,
    SlotState state,
    const Message *messagePtr)
{
    Slot *slotPtr = receiverPtr->slotPtr;
    struct timespec now;
    uint32_t seq;

    if (slotPtr != NULL && __atomic_load_n(&slotPtr->asker,
	    __ATOMIC_RELAXED) != receiverPtr->id) {
	ClaimSlot(receiverPtr);
	slotPtr = receiverPtr->slotPtr;
    }
    if (slotPtr == NULL) {
	return;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    seq = __atomic_load_n(&slotPtr->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&slotPtr->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&slotPtr->state, (uint32_t) state, __ATOMIC_RELAXED);
    __atomic_store_n(&slotPtr->since,
	    (uint64_t) now.tv_sec * 1000000000u + (uint64_t) now.tv_nsec,
	    __ATOMIC_RELAXED);
    if (state == SLOT_SERVING && messagePtr != NULL) {
	const struct sockaddr_storage *addrPtr = &messagePtr->addr;
	uint16_t family = (uint16_t) addrPtr->ss_family, port = 0;
	unsigned char addr[16];

	memset(addr, 0, sizeof(addr));
	if (family == AF_INET) {
	    const struct sockaddr_in *inPtr =
		    (const struct sockaddr_in *) addrPtr;

	    port = ntohs(inPtr->sin_port);
	    memcpy(addr, &inPtr->sin_addr, 4);
	} else if (family == AF_INET6) {
	    const struct sockaddr_in6 *in6Ptr =
		    (const struct sockaddr_in6 *) addrPtr;

	    port = ntohs(in6Ptr->sin6_port);
	    memcpy(addr, &in6Ptr->sin6_addr, 16);
	}
	__atomic_store_n(&slotPtr->family, family, __ATOMIC_RELAXED);
	__atomic_store_n(&slotPtr->peerPort, port, __ATOMIC_RELAXED);
	memcpy(slotPtr->peerAddr, addr, sizeof(addr));
	__atomic_store_n(&slotPtr->served, slotPtr->served + 1,
		__ATOMIC_RELAXED);
    }
    __atomic_store_n(&slotPtr->seq, seq + 2, __ATOMIC_RELEASE);
}

/*
 *----------------------------------------------------------------------
 *
 * HandingTo --
 *
 *	Accept thread, queueLock held: the scoreboard slot of the receiver
 *	a connection is about to be sent to.
 *
 * Results:
 *	The slot, or NULL if the receiver has none.
 *
 * Side effects:
 *	socketPtr->slotPtr caches it: one load checks it is still the
 *	receiver's, and only a receiver whose slot changed costs a search.
 *
 *----------------------------------------------------------------------
 */

static Slot *
HandingTo(
    Queue *queuePtr,
    ReplySocket *socketPtr)
{
    Slot *slotPtr = socketPtr->slotPtr;
    int i;

    if (slotPtr == NULL || __atomic_load_n(&slotPtr->asker,
	    __ATOMIC_RELAXED) != socketPtr->asker) {
	slotPtr = NULL;
	for (i = 0; i < BOARD_SLOTS; i++) {
	    if (__atomic_load_n(&queuePtr->board[i].asker, __ATOMIC_RELAXED)
		    == socketPtr->asker) {
		slotPtr = &queuePtr->board[i];
		break;
	    }
	}
	socketPtr->slotPtr = slotPtr;
    }
    return slotPtr;
}

/*
 *----------------------------------------------------------------------
 *
 * StampHanded --
 *
 *	Notes in a slot (if not NULL) that a connection was handed to its
 *	receiver now: its handed field, which only the accept thread (before
 *	it sends one) and the receiver's own 'client' (when it takes one from
 *	the ready queue) write.
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
StampHanded(
    Slot *slotPtr)
{
    struct timespec now;

    if (slotPtr != NULL) {
	clock_gettime(CLOCK_MONOTONIC, &now);
	__atomic_store_n(&slotPtr->handed,
		(uint64_t) now.tv_sec * 1000000000u + (uint64_t) now.tv_nsec,
		__ATOMIC_RELAXED);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * FreeSlot --
 *
 *	Frees the scoreboard slot of receiver asker, if it has one.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The slot's asker becomes 0, unless it changed meanwhile.
 *
 *----------------------------------------------------------------------
 */

static void
FreeSlot(
    Slot *board,
    uint64_t asker)
{
    int i;

    for (i = 0; i < BOARD_SLOTS; i++) {
	uint64_t expected = asker;

	if (__atomic_load_n(&board[i].asker, __ATOMIC_RELAXED) == asker) {
	    __atomic_compare_exchange_n(&board[i].asker, &expected, 0, 0,
		    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
	    return;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * NewReceiver --
 *
 *	Makes the interpreter's receiver for a queue, with no reply socket
 *	and no request yet.
 *
 * Results:
 *	The receiver.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static Receiver *
NewReceiver(
    InterpData *dataPtr,
    Queue *queuePtr)
{
    Receiver *receiverPtr = (Receiver *) ckalloc(sizeof(Receiver));

    memset(receiverPtr, 0, sizeof(Receiver));
    receiverPtr->dataPtr = dataPtr;
    receiverPtr->queuePtr = queuePtr;
    receiverPtr->thread = Tcl_GetCurrentThread();
    receiverPtr->replyFd = -1;
    receiverPtr->pollFd = -1;
    receiverPtr->stopFd = -1;
    receiverPtr->takenFd = -1;
    receiverPtr->keptFd = -1;
    receiverPtr->retryTimer = NULL;
    receiverPtr->state = NO_REQUEST;
    receiverPtr->handlerObj = NULL;
    receiverPtr->generation = forkGeneration;
    receiverPtr->nextPtr = dataPtr->firstReceiverPtr;
    dataPtr->firstReceiverPtr = receiverPtr;
    pthread_mutex_lock(&queueLock);
    KeepReserve();
    receiverPtr->id = ((uint64_t) getpid() << 32) | receiverCount++;
    receiverPtr->nextInProcess = allReceivers;
    allReceivers = receiverPtr;
    pthread_mutex_unlock(&queueLock);
    ClaimSlot(receiverPtr);
    return receiverPtr;
}

/*
 *----------------------------------------------------------------------
 *
 * FindReceiver --
 *
 *	Looks up the interpreter's receiver for a queue, dropping any
 *	receiver copied from the parent of a fork on the way.
 *
 * Results:
 *	The receiver or NULL.
 *
 * Side effects:
 *	Stale receivers are freed.
 *
 *----------------------------------------------------------------------
 */

static Receiver *
FindReceiver(
    InterpData *dataPtr,
    Queue *queuePtr)
{
    Receiver *receiverPtr, *nextPtr, *foundPtr = NULL;

    for (receiverPtr = dataPtr->firstReceiverPtr; receiverPtr != NULL;
	    receiverPtr = nextPtr) {
	nextPtr = receiverPtr->nextPtr;
	if (!DropIfStale(receiverPtr) && receiverPtr->queuePtr == queuePtr) {
	    foundPtr = receiverPtr;
	}
    }
    return foundPtr;
}

/*
 *----------------------------------------------------------------------
 *
 * DropIfStale --
 *
 *	The one guard against state that fork() copied: every way into the
 *	receive side (the commands through FindReceiver, the file handler,
 *	the timer and the event) passes it first. A receiver made before
 *	this process's last fork belongs to the parent: AtForkChild has
 *	already closed or replaced this process's copies of its descriptors.
 *
 * Results:
 *	1 if the receiver was stale and is freed, else 0.
 *
 * Side effects:
 *	See DropReceiver.
 *
 *----------------------------------------------------------------------
 */

static int
DropIfStale(
    Receiver *receiverPtr)
{
    if (receiverPtr->generation == forkGeneration) {
	return 0;
    }
    DropReceiver(receiverPtr);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * StopWatcher --
 *
 *	Tells a receiver's watcher thread to end, if nobody has yet, and
 *	joins it.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	None once the thread has been stopped, or was never started, or the
 *	receiver was copied by a fork (AtForkChild clears watching).
 *
 *----------------------------------------------------------------------
 */

static void
StopWatcher(
    Receiver *receiverPtr)
{
    uint64_t one = 1;

    pthread_mutex_lock(&queueLock);
    if (!receiverPtr->watching) {
	pthread_mutex_unlock(&queueLock);
	return;
    }
    receiverPtr->watching = 0;

    /* A new eventfd always takes one write. */
    while (write(receiverPtr->stopFd, &one, sizeof(one)) < 0
	    && errno == EINTR) {
    }
    pthread_mutex_unlock(&queueLock);
    pthread_join(receiverPtr->watcher, NULL);
}

/*
 *----------------------------------------------------------------------
 *
 * CloseReplySocket --
 *
 *	Stops watching a receiver's reply socket (joining its watcher
 *	thread) and closes it.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The serving process forgets the receiver when it next tries to send
 *	to it (or prunes it).
 *
 *----------------------------------------------------------------------
 */

static void
CloseReplySocket(
    Receiver *receiverPtr)
{
    if (receiverPtr->retryTimer != NULL) {
	Tcl_DeleteTimerHandler(receiverPtr->retryTimer);
	receiverPtr->retryTimer = NULL;
    } else if (receiverPtr->replyFd >= 0 && !watchInThread) {
	Tcl_DeleteFileHandler(receiverPtr->replyFd);
    }
    StopWatcher(receiverPtr);
    DeleteEventsOf(receiverPtr, ReplyReadable);
    pthread_mutex_lock(&queueLock);
    CloseFd(&receiverPtr->replyFd);
    CloseFd(&receiverPtr->pollFd);
    CloseFd(&receiverPtr->stopFd);
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * ReturnReceived --
 *
 *	queueLock held, live receiver: shuts its reply socket for reading,
 *	so that the serving process can no longer send to it, and sends
 *	every connection that came before, like a ready connection its
 *	request took, back up the queue (ReturnConnections).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The receiver holds no connection any more. A process that has no
 *	descriptor to spare closes its reserve one to take them, one at a
 *	time, and opens it again. (Without a reserve, EMFILE: a connection
 *	this process has no room for is closed with the socket; lastErrno
 *	says so.)
 *
 *----------------------------------------------------------------------
 */

static void
ReturnReceived(
    Receiver *receiverPtr)
{
    Queue *queuePtr = receiverPtr->queuePtr;
    Message message;
    ssize_t got;
    int fd;

    if (receiverPtr->takenFd >= 0) {
	ReturnConnections(queuePtr, receiverPtr->takenFd,
		&receiverPtr->takenMessage);
	receiverPtr->takenFd = -1;
    }
    SendKept(receiverPtr);
    if (receiverPtr->replyFd < 0) {
	return;
    }
    shutdown(receiverPtr->replyFd, SHUT_RD);
    for (;;) {
	got = ancil_recv_fd(receiverPtr->replyFd, &fd, &message,
		sizeof(message), MSG_DONTWAIT);
	if (got > 0 && IsConnection(got, fd, &message)) {
	    /* Closes fd: the slot is free for the next one. */
	    ReturnConnections(queuePtr, fd, &message);
	} else if (got < 0 && errno == EMFILE && reserveFd >= 0) {
	    CloseFd(&reserveFd);
	} else if (got == 0 || (got < 0 && errno != EBADMSG)) {
	    if (got < 0 && errno == EMFILE) {
		queuePtr->lastErrno = EMFILE;
	    }
	    break;
	}
    }
    KeepReserve();
}

/*
 *----------------------------------------------------------------------
 *
 * KeepReserve --
 *
 *	queueLock held: opens the reserve descriptor if the process has
 *	none (the first receiver, or ReturnReceived used it).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	If this fails, a later call tries again; until then a return at
 *	EMFILE closes the connection, and lastErrno says so.
 *
 *----------------------------------------------------------------------
 */

static void
KeepReserve(void)
{
    if (reserveFd < 0) {
	reserveFd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * DropReceiver --
 *
 *	Frees a receiver (interpreter deleted, or stale) without losing a
 *	connection (ReturnReceived).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	For a stale receiver only this process's copies go: the parent
 *	still owns the request.
 *
 *----------------------------------------------------------------------
 */

static void
DropReceiver(
    Receiver *receiverPtr)
{
    Receiver **linkPtr = &receiverPtr->dataPtr->firstReceiverPtr;

    while (*linkPtr != receiverPtr) {
	linkPtr = &(*linkPtr)->nextPtr;
    }
    *linkPtr = receiverPtr->nextPtr;

    if (receiverPtr->state == TAKEN) {
	DeleteEventsOf(receiverPtr, DeliverTaken);
    }
    if (receiverPtr->generation == forkGeneration) {
	pthread_mutex_lock(&queueLock);
	ReturnReceived(receiverPtr);
	pthread_mutex_unlock(&queueLock);
	FreeSlot(receiverPtr->queuePtr->board, receiverPtr->id);
    }
    CloseReplySocket(receiverPtr);

    pthread_mutex_lock(&queueLock);
    linkPtr = &allReceivers;
    while (*linkPtr != receiverPtr) {
	linkPtr = &(*linkPtr)->nextInProcess;
    }
    *linkPtr = receiverPtr->nextInProcess;
    CloseFd(&receiverPtr->takenFd);
    CloseFd(&receiverPtr->keptFd);
    pthread_mutex_unlock(&queueLock);
    Tcl_CancelIdleCall(SendKeptWhenIdle, receiverPtr);
    if (receiverPtr->handlerObj != NULL) {
	Tcl_DecrRefCount(receiverPtr->handlerObj);
    }
    ckfree((char *) receiverPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * ServerCmd --
 *
 *	$cmd server ?-myaddr addr? ?-backlog n? port
 *	$cmd server -fd fd ?port?
 *	Listens on port, or on the listening socket the process inherited
 *	as descriptor fd (systemd's socket activation, an upgrade in place),
 *	and starts the accept thread, creating the port's queue or resuming
 *	into the one this process already has.
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
    static const char *const options[] = {
	"-backlog", "-fd", "-keepalive", "-myaddr", "-ready", "-readyafter",
	NULL
    };
    enum options {
	OPT_BACKLOG, OPT_FD, OPT_KEEPALIVE, OPT_MYADDR, OPT_READY,
	OPT_READYAFTER
    };
    const char *mark = "";
    Tcl_Size markLength = 0;
    uint64_t timeoutNs[WATCH_KINDS] = {0, DEFAULT_KEEPALIVE_NS};
    struct rlimit limit;
    double seconds;
    const char *myaddr = "0.0.0.0";
    char boundAddr[NI_MAXHOST];
    int backlog = SOMAXCONN, port = 0, boundPort, listenFd, i, index;
    int adoptFd = -1, bindOptions = 0;
    int queueFds[2], readyFds[2], boardFd;
    Slot *board;
    Queue *queuePtr;

    /*
     * Options as Tcl's own 'socket' reads them: up to the first word that
     * does not start with "-", each option's value the word after it.
     */

    for (i = 2; i < objc; i++) {
	const char *word = Tcl_GetString(objv[i]);

	if (word[0] != '-') {
	    break;
	}
	if (Tcl_GetIndexFromObj(interp, objv[i], options, "option", 0,
		&index) != TCL_OK) {
	    return TCL_ERROR;
	}
	if (++i == objc) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "no argument given for %s option", options[index]));
	    Tcl_SetErrorCode(interp, "TCL", "ARGUMENT", "MISSING", NULL);
	    return TCL_ERROR;
	}
	switch ((enum options) index) {
	case OPT_BACKLOG:
	    if (!GetIntInRange(objv[i], 1, INT_MAX, &backlog)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected positive integer backlog but got \"%s\"",
			Tcl_GetString(objv[i])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "BACKLOG", NULL);
		return TCL_ERROR;
	    }
	    bindOptions = 1;
	    break;
	case OPT_FD:
	    if (!GetIntInRange(objv[i], 0, INT_MAX, &adoptFd)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected a descriptor number but got \"%s\"",
			Tcl_GetString(objv[i])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "FD", NULL);
		return TCL_ERROR;
	    }
	    break;
	case OPT_MYADDR:
	    myaddr = Tcl_GetString(objv[i]);
	    bindOptions = 1;
	    break;
	case OPT_READYAFTER:
	    mark = Tcl_GetStringFromObj(objv[i], &markLength);
	    if (markLength > MARK_MAX || !IsAscii(mark, markLength)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected at most %d ASCII characters for -readyafter "
			"but got \"%s\"", MARK_MAX, mark));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "READYAFTER", NULL);
		return TCL_ERROR;
	    }
	    break;
	case OPT_KEEPALIVE:
	case OPT_READY:
	    if (Tcl_GetDoubleFromObj(NULL, objv[i], &seconds) != TCL_OK
		    || !(seconds >= 0 && seconds <= 86400)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected a number of seconds from 0 to 86400 for %s "
			"but got \"%s\"", options[index],
			Tcl_GetString(objv[i])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE",
			(index == OPT_READY) ? "READY" : "KEEPALIVE", NULL);
		return TCL_ERROR;
	    }
	    /* A time too short to count in ns is still no "0". */
	    timeoutNs[(index == OPT_READY) ? WATCH_SILENT : WATCH_PARKED] =
		    (seconds > 0 && seconds < 1e-9) ? 1
		    : (uint64_t) (seconds * 1e9);
	    break;
	}
    }
    if ((adoptFd < 0 && i != objc - 1) || (adoptFd >= 0 && i < objc - 1)) {
	Tcl_WrongNumArgs(interp, 2, objv,
		"?-ready s? ?-readyafter string? ?-keepalive s? ?-myaddr addr? "
		"?-backlog n? port | -fd fd ?port?");
	return TCL_ERROR;
    }
    if (adoptFd >= 0 && bindOptions) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"-fd takes a socket that listens already: -myaddr and "
		"-backlog don't apply", -1));
	Tcl_SetErrorCode(interp, "TCL", "ARGUMENT", "FD", NULL);
	return TCL_ERROR;
    }
    if (i == objc - 1 && ParsePort(interp, objv[i], &port) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * A port this process knows: refuse before binding, so that the
     * reason is ours and not the parent's listener (EADDRINUSE).
     */

    pthread_mutex_lock(&queueLock);
    queuePtr = (port != 0) ? FindQueue(port) : NULL;
    if (queuePtr != NULL && ClaimRefused(interp, queuePtr)) {
	pthread_mutex_unlock(&queueLock);
	return TCL_ERROR;
    }
    pthread_mutex_unlock(&queueLock);

    if (adoptFd >= 0) {
	if (AdoptListener(interp, adoptFd, port, &listenFd, &boundPort,
		boundAddr) != TCL_OK) {
	    return TCL_ERROR;
	}
    } else if (OpenNewListener(interp, myaddr, port, backlog, &listenFd,
	    &boundPort, boundAddr) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * Find or make the queue of the bound port, and claim it.
     */

    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(boundPort);
    if (queuePtr != NULL && ClaimRefused(interp, queuePtr)) {
	pthread_mutex_unlock(&queueLock);
	close(listenFd);
	return TCL_ERROR;
    }
    if (queuePtr == NULL) {
	pthread_mutex_unlock(&queueLock);
	Pending *pending = malloc(LIST_MIN * sizeof(Pending));

	/*
	 * The accept thread accepts only while nothing is pending, so with
	 * this room an accepted connection always fits in the list.
	 */

	if (pending == NULL) {
	    close(listenFd);
	    errno = ENOMEM;
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't create the queue for port %d: %s", boundPort,
		    Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	if (MakeQueueSockets(queueFds, readyFds) != 0) {
	    free(pending);
	    close(listenFd);
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't create the queue for port %d (SOCK_SEQPACKET "
		    "socketpairs): %s", boundPort, Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	if ((board = MakeBoard(&boardFd)) == NULL) {
	    int error = errno;

	    free(pending);
	    close(listenFd);
	    for (i = 0; i < 2; i++) {
		close(queueFds[i]);
		close(readyFds[i]);
	    }
	    errno = error;
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't create the scoreboard for port %d: %s",
		    boundPort, Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	pthread_mutex_lock(&queueLock);
	queuePtr = AddQueue(boundPort, queueFds, readyFds, boardFd, board);
	queuePtr->pending = pending;
	queuePtr->pendingSpace = LIST_MIN;
    }
    queuePtr->state = LISTENING;
    __atomic_store_n(&TRAILER(queuePtr->board)->closed, 0, __ATOMIC_RELEASE);
    memcpy(TRAILER(queuePtr->board)->mark, mark, (size_t) markLength);
    TRAILER(queuePtr->board)->markLength = (uint32_t) markLength;
    memcpy(queuePtr->myaddr, boundAddr, sizeof(queuePtr->myaddr));
    memcpy(queuePtr->timeoutNs, timeoutNs, sizeof(timeoutNs));

    /*
     * Watched connections may take half the descriptors this process can
     * have: the other half is the workers' and the application's.
     */

    queuePtr->watchLimit = WATCH_MAX;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
	    && limit.rlim_cur / 2 < WATCH_MAX) {
	queuePtr->watchLimit = (int) (limit.rlim_cur / 2);
    }
    if (adoptFd >= 0) {
	AdoptPassed(queuePtr, adoptFd);
    }
    pthread_mutex_unlock(&queueLock);

    if (StartAccepting(interp, queuePtr, listenFd) != TCL_OK) {
	return TCL_ERROR;
    }
    if (adoptFd >= 0) {
	close(adoptFd);
    }
    Tcl_SetObjResult(interp, Tcl_NewIntObj(boundPort));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * IsAscii --
 *
 *	Whether length bytes of string are all ASCII (one byte each, the
 *	same in Tcl's string and on the wire).
 *
 * Results:
 *	1 or 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
IsAscii(
    const char *string,
    Tcl_Size length)
{
    Tcl_Size i;

    for (i = 0; i < length; i++) {
	if ((unsigned char) string[i] >= 0x80 || string[i] == '\0') {
	    return 0;
	}
    }
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * GetIntInRange --
 *
 *	Reads an integer from min to max. Tcl_GetIntFromObj() would take a
 *	number that does not fit in an int modulo 2^32 (4294967376 as 80,
 *	-4294967295 as 1): a port, a pid or a backlog must never wrap.
 *
 * Results:
 *	1 with *valuePtr set, or 0 if objPtr is no integer in the range.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
GetIntInRange(
    Tcl_Obj *objPtr,
    Tcl_WideInt min,
    Tcl_WideInt max,
    int *valuePtr)
{
    Tcl_WideInt value;

    if (Tcl_GetWideIntFromObj(NULL, objPtr, &value) != TCL_OK
	    || value < min || value > max) {
	return 0;
    }
    *valuePtr = (int) value;
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * ParsePort --
 *
 *	Reads a port: a number from 0 to 65535 or a TCP service name from
 *	the services database ("http").
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
    const char *text = Tcl_GetString(objPtr);
    struct addrinfo hints, *addrs;

    if (GetIntInRange(objPtr, 0, 65535, portPtr)) {
	return TCL_OK;
    } else if (isalpha((unsigned char) text[0])) {
	/*
	 * A TCP service name, as Tcl's 'socket' takes (getservbyname()
	 * there; getaddrinfo() here, which is thread-safe). Names start with
	 * a letter: a number too large for an int must not reach
	 * getaddrinfo(), which takes it modulo 65536.
	 */

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	if (getaddrinfo(NULL, text, &hints, &addrs) == 0) {
	    *portPtr = ntohs(((struct sockaddr_in *) addrs->ai_addr)->sin_port);
	    freeaddrinfo(addrs);
	    return TCL_OK;
	}
    }
    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
	    "expected port number from 0 to 65535 or a TCP service name but "
	    "got \"%s\"", text));
    Tcl_SetErrorCode(interp, "TCL", "VALUE", "PORT", NULL);
    return TCL_ERROR;
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
	/* Close-on-exec from the start: another thread may exec. */
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
		ai->ai_protocol);
	if (fd < 0) {
	    error = errno;
	    continue;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) == 0
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
 * OpenNewListener --
 *
 *	OpenListener, except that for port 0 it avoids the ports this
 *	process already has a queue for: 'server 0' asks for a new server,
 *	and a recycled port number would otherwise resume an old queue,
 *	with whatever workers and counts it has. Each refused listener is
 *	kept open while the next is bound, so the kernel picks another
 *	number; after NEW_PORT_TRIES the last one is used anyway.
 *
 * Results:
 *	As OpenListener.
 *
 * Side effects:
 *	None on error.
 *
 *----------------------------------------------------------------------
 */

static int
OpenNewListener(
    Tcl_Interp *interp,
    const char *myaddr,
    int port,
    int backlog,
    int *fdPtr,
    int *boundPortPtr,
    char *boundAddr)
{
    int refused[NEW_PORT_TRIES], numRefused = 0, known, status;

    for (;;) {
	status = OpenListener(interp, myaddr, port, backlog, fdPtr,
		boundPortPtr, boundAddr);
	if (status != TCL_OK || port != 0 || numRefused == NEW_PORT_TRIES) {
	    break;
	}
	pthread_mutex_lock(&queueLock);
	known = (FindQueue(*boundPortPtr) != NULL);
	pthread_mutex_unlock(&queueLock);
	if (!known) {
	    break;
	}
	refused[numRefused++] = *fdPtr;
    }
    while (numRefused > 0) {
	close(refused[--numRefused]);
    }
    return status;
}

/*
 *----------------------------------------------------------------------
 *
 * AdoptPassed --
 *
 *	queueLock held, 'server -fd fd': if 'reexec' passed fd (LISTENER_ENV
 *	names it), takes the connections it passed with it into the pending
 *	list, first in line, in the order they were accepted.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	LISTENER_ENV is removed from the environment. Each connection
 *	becomes close-on-exec; one whose client is gone is closed, and a
 *	descriptor that is no stream socket left alone.
 *
 *----------------------------------------------------------------------
 */

static void
AdoptPassed(
    Queue *queuePtr,
    int adoptFd)
{
    const char *value = getenv(LISTENER_ENV);
    char *end;
    long port, fd;
    int type;
    socklen_t length;
    Message message;

    if (value == NULL) {
	return;
    }
    port = strtol(value, &end, 10);
    fd = strtol(end, &end, 10);
    if (port != queuePtr->port || fd != adoptFd) {
	return;
    }
    for (;;) {
	int kind = -1;

	while (*end == ' ') {
	    end++;
	}
	if (*end == 's' || *end == 'p') {
	    kind = (*end == 's') ? WATCH_SILENT : WATCH_PARKED;
	    end++;
	}
	if (!isdigit((unsigned char) *end)) {
	    break;
	}
	fd = strtol(end, &end, 10);
	memset(&message, 0, sizeof(message));
	length = sizeof(type);
	if (fd < 0 || fd > INT_MAX
		|| getsockopt((int) fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0
		|| type != SOCK_STREAM) {
	    continue;
	}
	length = sizeof(message.addr);
	if (getpeername((int) fd, (struct sockaddr *) &message.addr,
		&length) < 0) {
	    /* Ours, but its client is gone. */
	    close((int) fd);
	    continue;
	}
	fcntl((int) fd, F_SETFD, FD_CLOEXEC);
	message.magic = MESSAGE_MAGIC;
	message.addrLen = length;
	if (kind < 0 || (kind == WATCH_SILENT
		&& queuePtr->timeoutNs[WATCH_SILENT] == 0)) {
	    /* Pending, or silent where this program hands over at once. */
	    MakePending(queuePtr, (int) fd, &message);
	} else {
	    WatchConnection(queuePtr, (int) fd, &message, (WatchKind) kind);
	}
    }
    unsetenv(LISTENER_ENV);
}

/*
 *----------------------------------------------------------------------
 *
 * AdoptListener --
 *
 *	Takes descriptor fd, inherited from whoever started the process
 *	(systemd's socket activation, an upgrade in place), as a listener:
 *	it must be a TCP socket (IPv4 or IPv6) that listens already. It is
 *	never listen()ed on again (its backlog is the creator's, and SELinux
 *	may refuse a second listen()).
 *
 * Results:
 *	TCL_OK with a close-on-exec duplicate of fd in *fdPtr (the caller
 *	closes fd once it serves, and nothing is lost if it fails before),
 *	its port in *boundPortPtr and numeric address in boundAddr
 *	(NI_MAXHOST bytes); or TCL_ERROR with a message and -errorcode
 *	{SOCKETSERVER NOTLISTENING fd}, {SOCKETSERVER WRONGPORT port} if port
 *	is not 0 and fd listens on another, or POSIX.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
AdoptListener(
    Tcl_Interp *interp,
    int fd,
    int port,
    int *fdPtr,
    int *boundPortPtr,
    char *boundAddr)
{
    struct sockaddr_storage bound;
    socklen_t length = sizeof(bound);
    char fdText[TCL_INTEGER_SPACE], service[NI_MAXSERV];
    int type = 0, listening = 0;
    socklen_t intLength = sizeof(int);

    snprintf(fdText, sizeof(fdText), "%d", fd);
    if (fcntl(fd, F_GETFD) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't adopt descriptor %d: %s", fd,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &intLength) < 0
	    || type != SOCK_STREAM
	    || (intLength = sizeof(int), getsockopt(fd, SOL_SOCKET,
		SO_ACCEPTCONN, &listening, &intLength)) < 0
	    || !listening
	    || getsockname(fd, (struct sockaddr *) &bound, &length) < 0
	    || (bound.ss_family != AF_INET && bound.ss_family != AF_INET6)
	    || getnameinfo((struct sockaddr *) &bound, length, boundAddr,
		NI_MAXHOST, service, sizeof(service),
		NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't adopt descriptor %d: it is not a listening TCP "
		"socket", fd));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOTLISTENING", fdText,
		NULL);
	return TCL_ERROR;
    }
    if (port != 0 && atoi(service) != port) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't adopt descriptor %d: it listens on port %s, not %d",
		fd, service, port));
	SetPortErrorCode(interp, "WRONGPORT", port);
	return TCL_ERROR;
    }
    if ((*fdPtr = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't adopt descriptor %d: %s", fd,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    *boundPortPtr = atoi(service);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * MakeQueueSockets --
 *
 *	Makes the two socketpairs of a new queue, close-on-exec: the one
 *	asks travel up, and the one ready connections wait in. The latter's
 *	send buffer is made as small as the kernel allows (about six
 *	messages), so that few connections wait there rather than in the
 *	listen backlog, and the accept thread hears (POLLOUT) when readers
 *	have nearly emptied it.
 *
 * Results:
 *	0, or -1 with errno set and nothing left open.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
MakeQueueSockets(
    int askFds[2],
    int readyFds[2])
{
    int smallest = 1, error;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, readyFds) < 0) {
	return -1;
    }
    if (setsockopt(readyFds[1], SOL_SOCKET, SO_SNDBUF, &smallest,
	    sizeof(smallest)) == 0
	    && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0,
		    askFds) == 0) {
	return 0;
    }
    error = errno;
    close(readyFds[0]);
    close(readyFds[1]);
    errno = error;
    return -1;
}

/*
 *----------------------------------------------------------------------
 *
 * AddQueue --
 *
 *	queueLock held: makes the queue of port from its socketpairs' ends
 *	(-1 for an end this process does not have) and adds it to the
 *	process's list.
 *
 * Results:
 *	The new queue, not listening.
 *
 * Side effects:
 *	The first queue of the process becomes the default for 'client'.
 *
 *----------------------------------------------------------------------
 */

static Queue *
AddQueue(
    int port,
    const int askFds[2],
    const int readyFds[2],
    int boardFd,
    Slot *board)
{
    Queue *queuePtr = (Queue *) ckalloc(sizeof(Queue));
    Queue **linkPtr = &firstQueuePtr;
    int i;

    memset(queuePtr, 0, sizeof(Queue));
    queuePtr->port = port;
    queuePtr->askFds[0] = askFds[0];
    queuePtr->askFds[1] = askFds[1];
    queuePtr->readyFds[0] = readyFds[0];
    queuePtr->readyFds[1] = readyFds[1];
    queuePtr->boardFd = boardFd;
    queuePtr->board = board;
    queuePtr->listenFd = -1;
    queuePtr->pollFd = -1;
    queuePtr->wakeFds[0] = queuePtr->wakeFds[1] = -1;
    queuePtr->pruneMark = PRUNE_MIN;
    queuePtr->state = NOT_LISTENING;
    queuePtr->freeWatched = -1;
    queuePtr->watchPollFd = -1;
    for (i = 0; i < WATCH_KINDS; i++) {
	queuePtr->firstWatched[i] = queuePtr->lastWatched[i] = -1;
    }
    while (*linkPtr != NULL) {
	linkPtr = &(*linkPtr)->nextPtr;
    }
    *linkPtr = queuePtr;
    if (defaultPort < 0) {
	defaultPort = port;
    }
    return queuePtr;
}

/*
 *----------------------------------------------------------------------
 *
 * ClaimRefused --
 *
 *	queueLock held: tells whether 'server' must refuse a port whose
 *	queue this process already has: it listens on it already, or it
 *	inherited the queue from the process that serves it.
 *
 * Results:
 *	1 with a message and -errorcode {SOCKETSERVER BUSY|INHERITED port}
 *	in interp, or 0 if this process may listen on it.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ClaimRefused(
    Tcl_Interp *interp,
    Queue *queuePtr)
{
    /* Closed, but its accept thread may still be handing over. */
    FinishDraining(queuePtr);
    if (queuePtr->state != NOT_LISTENING) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process is already "
		"listening on it", queuePtr->port));
	SetPortErrorCode(interp, "BUSY", queuePtr->port);
	return 1;
    }
    if (queuePtr->askFds[0] < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process inherited "
		"that port's queue from the process that serves it",
		queuePtr->port));
	SetPortErrorCode(interp, "INHERITED", queuePtr->port);
	return 1;
    }
    return 0;
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
 *	The listener is closed: new connections are refused. Those accepted
 *	and not handed over yet go to the next receivers that ask, here or
 *	in any worker (the accept thread drains them, then ends); watched
 *	ones are closed. The queue stays: a later 'server port' resumes into
 *	it, with what is still pending then going first.
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
    ssize_t written;

    if (objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "port");
	return TCL_ERROR;
    }
    if (ClaimListening(interp, objv[2], &queuePtr) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * New connections are refused from here on. With connections it
     * accepted still pending, the accept thread goes on handing them to
     * whichever receiver asks, and ends once none is left (DRAINING):
     * they may be more than the ready queue holds, and no receiver of
     * another process could take them from here. The watched ones have
     * not asked anything: their clients see the server close, as from
     * any server that stops.
     */

    pthread_mutex_lock(&queueLock);
    __atomic_store_n(&TRAILER(queuePtr->board)->closed, 1, __ATOMIC_SEQ_CST);
    CloseAllWatched(queuePtr, 1);
    if (queuePtr->numPending == 0) {
	/*
	 * Nothing to hand over: stop the thread now, as its descriptors
	 * are better closed before 'close' returns. What it accepted and
	 * watched meanwhile, and what workers released until they saw the
	 * port closed, is closed after it.
	 */

	pthread_mutex_unlock(&queueLock);
	StopAccepting(queuePtr, NULL);
	WaitReleasing(queuePtr);
	pthread_mutex_lock(&queueLock);
	ReadQueue(queuePtr);
	CloseAllWatched(queuePtr, 1);
	pthread_mutex_unlock(&queueLock);
	Tcl_ResetResult(interp);
	return TCL_OK;
    }
    queuePtr->state = DRAINING;
    CloseFd(&queuePtr->listenFd);
    pthread_mutex_unlock(&queueLock);
    do {
	written = write(queuePtr->wakeFds[1], "x", 1);
    } while (written < 0 && errno == EINTR);
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * KeepAcrossExec --
 *
 *	queueLock held, 'reexec': makes every connection not handed over
 *	yet, pending or watched, stay open across an exec (keep 1), or no
 *	longer (keep 0, the exec failed).
 *
 * Results:
 *	0, or the errno value of the first that failed.
 *
 * Side effects:
 *	Changes their close-on-exec flags.
 *
 *----------------------------------------------------------------------
 */

static int
KeepAcrossExec(
    Queue *queuePtr,
    int keep)
{
    int i, kind, index, error = 0;

    for (i = 0; i < queuePtr->numPending; i++) {
	if (fcntl(queuePtr->pending[i].fd, F_SETFD, keep ? 0 : FD_CLOEXEC) < 0
		&& error == 0) {
	    error = errno;
	}
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->firstWatched[kind]; index >= 0;
		index = queuePtr->watched[index].next) {
	    if (fcntl(queuePtr->watched[index].fd, F_SETFD,
		    keep ? 0 : FD_CLOEXEC) < 0 && error == 0) {
		error = errno;
	    }
	}
    }
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * ReexecCmd --
 *
 *	$cmd reexec port command ?arg ...?
 *	Replaces this process's program by command (execvp(): the same pid,
 *	children and service manager's view) without closing port's
 *	listener: connections that come meanwhile wait in its backlog until
 *	the new program adopts it ('server -fd'), which LISTENER_ENV tells
 *	it as "PORT FD CONNECTION ...". The accept thread is stopped first;
 *	every connection it had accepted that no worker took yet (from the
 *	ready queue too) crosses the exec with the listener, and goes first
 *	in the new program. Signals with scripts are blocked across the
 *	exec, until the new program sets its own. Every other descriptor of the extension is close-on-exec: the
 *	queue ends with the exec, and its workers with it, once they have
 *	finished what they have.
 *
 * Results:
 *	Does not return on success. TCL_ERROR, POSIX, if the exec failed:
 *	the process serves on as before.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
ReexecCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Queue *queuePtr;
    const char **argv;
    Tcl_Obj *valueObj;
    sigset_t scripted, oldMask;
    int port, listenFd, i, error, kind, index;

    if (objc < 4) {
	Tcl_WrongNumArgs(interp, 2, objv, "port command ?arg ...?");
	return TCL_ERROR;
    }
    if (ClaimListening(interp, objv[2], &queuePtr) != TCL_OK) {
	return TCL_ERROR;
    }
    port = queuePtr->port;
    StopAccepting(queuePtr, &listenFd);

    /*
     * The connections accepted and not taken yet, those in the ready
     * queue too (they would go only to the workers of now, which may be
     * busy for long), cross the exec with the listener, to go first in
     * the new program. Ready to accept again on the same listener, with
     * them, if the exec does not happen (StartAccepting wants the state
     * LISTENING).
     */

    valueObj = Tcl_ObjPrintf("%d %d", port, listenFd);
    Tcl_IncrRefCount(valueObj);
    pthread_mutex_lock(&queueLock);
    DrainReady(queuePtr);
    for (i = 0; i < queuePtr->numPending; i++) {
	Tcl_AppendPrintfToObj(valueObj, " %d", queuePtr->pending[i].fd);
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->firstWatched[kind]; index >= 0;
		index = queuePtr->watched[index].next) {
	    Tcl_AppendPrintfToObj(valueObj, " %c%d",
		    (kind == WATCH_SILENT) ? 's' : 'p',
		    queuePtr->watched[index].fd);
	}
    }
    queuePtr->state = LISTENING;
    pthread_mutex_unlock(&queueLock);

    argv = (const char **) ckalloc((objc - 2) * sizeof(char *));
    for (i = 3; i < objc; i++) {
	argv[i - 3] = Tcl_GetString(objv[i]);
    }
    argv[objc - 3] = NULL;
    Tcl_SetVar2(interp, "env", LISTENER_ENV, Tcl_GetString(valueObj),
	    TCL_GLOBAL_ONLY);
    Tcl_DecrRefCount(valueObj);

    /*
     * A signal this process has a script for would take its default
     * action (terminate, stop) from the exec until the new program sets
     * its script: blocked, it waits for that (the mask crosses exec).
     */

    sigemptyset(&scripted);
    pthread_mutex_lock(&signalLock);
    for (i = 1; i < NSIG; i++) {
	if (signalHandlers[i] != NULL) {
	    sigaddset(&scripted, i);
	}
    }
    pthread_mutex_unlock(&signalLock);
    pthread_sigmask(SIG_BLOCK, &scripted, &oldMask);
    pthread_mutex_lock(&queueLock);
    error = KeepAcrossExec(queuePtr, 1);
    pthread_mutex_unlock(&queueLock);
    if (error == 0 && fcntl(listenFd, F_SETFD, 0) == 0) {
	execvp(argv[0], (char *const *) argv);
    }
    if (error == 0) {
	error = errno;
    }
    pthread_sigmask(SIG_SETMASK, &oldMask, NULL);
    fcntl(listenFd, F_SETFD, FD_CLOEXEC);
    pthread_mutex_lock(&queueLock);
    KeepAcrossExec(queuePtr, 0);
    pthread_mutex_unlock(&queueLock);
    Tcl_UnsetVar2(interp, "env", LISTENER_ENV, TCL_GLOBAL_ONLY);
    ckfree((char *) argv);
    if (StartAccepting(interp, queuePtr, listenFd) != TCL_OK) {
	return TCL_ERROR;
    }
    errno = error;
    Tcl_SetObjResult(interp, Tcl_ObjPrintf("couldn't re-execute \"%s\": %s",
	    Tcl_GetString(objv[3]), Tcl_PosixError(interp)));
    return TCL_ERROR;
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
    Tcl_Obj *resultObj;
    Queue *queuePtr;
    Receiver *receiverPtr;
    int port, requested, readyBytes;

    if (objc != 2 && objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "?port?");
	return TCL_ERROR;
    }
    if (objc == 2) {
	resultObj = Tcl_NewObj();
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
	return TCL_ERROR;
    }
    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(port);
    pthread_mutex_unlock(&queueLock);
    if (queuePtr == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"no server on port %d in this process", port));
	SetPortErrorCode(interp, "NOSERVER", port);
	return TCL_ERROR;
    }
    receiverPtr = FindReceiver(dataPtr, queuePtr);
    requested = (receiverPtr != NULL && receiverPtr->state != NO_REQUEST);
    resultObj = Tcl_NewObj();

    /*
     * The ready queue's reading end is in every process: FIONREAD there
     * counts the bytes of every message waiting (Linux), one Message
     * each.
     */

    if (ioctl(queuePtr->readyFds[0], FIONREAD, &readyBytes) < 0) {
	readyBytes = 0;
    }

#define PUT(key, valueObj) \
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj((key), -1), (valueObj))
    pthread_mutex_lock(&queueLock);
    PUT("port", Tcl_NewIntObj(queuePtr->port));
    PUT("myaddr", Tcl_NewStringObj(queuePtr->myaddr, -1));
    PUT("listening", Tcl_NewBooleanObj(queuePtr->state == LISTENING));
    PUT("accepted", Tcl_NewLongObj(queuePtr->accepted));
    PUT("received", Tcl_NewLongObj(queuePtr->received));
    PUT("requested", Tcl_NewBooleanObj(requested));
    PUT("waiting", Tcl_NewIntObj(queuePtr->numAsks));
    PUT("queued", Tcl_NewIntObj(queuePtr->numPending
	    + readyBytes / (int) sizeof(Message)));
    PUT("watching", Tcl_NewIntObj(queuePtr->numWatched[WATCH_SILENT]
	    + queuePtr->numWatched[WATCH_PARKED]));
    PUT("parked", Tcl_NewIntObj(queuePtr->numWatched[WATCH_PARKED]));
    PUT("closed", Tcl_NewLongObj(queuePtr->closed));
    PUT("watchlimit", Tcl_NewIntObj(queuePtr->watchLimit));
    errno = queuePtr->lastErrno;
    PUT("lasterror", Tcl_NewStringObj(errno ? Tcl_ErrnoId() : "", -1));
    pthread_mutex_unlock(&queueLock);
    PUT("workers", BoardObj(queuePtr));
#undef PUT
    Tcl_SetObjResult(interp, resultObj);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * BoardObj --
 *
 *	What every receiver of a queue is doing, read from its scoreboard.
 *	Slots of processes that are gone (collected after they exited, or
 *	killed) are freed on the way.
 *
 * Results:
 *	A new list of dicts, one per receiver: pid, state (waiting, serving,
 *	idle, or exited: not yet collected), for (seconds in that state),
 *	served (connections delivered), while serving peer (address and
 *	port), and handed (seconds since) if it waits but was handed a
 *	connection it has not taken.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static Tcl_Obj *
BoardObj(
    Queue *queuePtr)
{
    static const char *const stateNames[] = {
	"", "waiting", "serving", "idle", "exited"
    };
    Tcl_Obj *listObj = Tcl_NewObj();
    struct timespec now;
    uint64_t nowNs;
    int i;

    clock_gettime(CLOCK_MONOTONIC, &now);
    nowNs = (uint64_t) now.tv_sec * 1000000000u + (uint64_t) now.tv_nsec;
    for (i = 0; i < BOARD_SLOTS; i++) {
	Slot *slotPtr = &queuePtr->board[i], copy;
	Tcl_Obj *workerObj;
	uint32_t seq;
	int tries = 0;
	pid_t pid;

	do {
	    seq = __atomic_load_n(&slotPtr->seq, __ATOMIC_ACQUIRE);
	    copy.asker = __atomic_load_n(&slotPtr->asker, __ATOMIC_RELAXED);
	    copy.state = __atomic_load_n(&slotPtr->state, __ATOMIC_RELAXED);
	    copy.since = __atomic_load_n(&slotPtr->since, __ATOMIC_RELAXED);
	    copy.served = __atomic_load_n(&slotPtr->served, __ATOMIC_RELAXED);
	    copy.family = __atomic_load_n(&slotPtr->family, __ATOMIC_RELAXED);
	    copy.peerPort = __atomic_load_n(&slotPtr->peerPort,
		    __ATOMIC_RELAXED);
	    memcpy(copy.peerAddr, slotPtr->peerAddr, sizeof(copy.peerAddr));
	    __atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while ((seq % 2 == 1
		|| seq != __atomic_load_n(&slotPtr->seq, __ATOMIC_RELAXED))
		&& ++tries < 1000);
	copy.handed = __atomic_load_n(&slotPtr->handed, __ATOMIC_RELAXED);
	if (copy.asker == 0 || tries == 1000
		|| copy.state < SLOT_WAITING || copy.state > SLOT_EXITED) {
	    continue;
	}
	pid = (pid_t) (copy.asker >> 32);
	if (kill(pid, 0) < 0 && errno == ESRCH) {
	    FreeSlot(queuePtr->board, copy.asker);
	    continue;
	}
	workerObj = Tcl_NewObj();
#define PUT(key, valueObj) \
    Tcl_DictObjPut(NULL, workerObj, Tcl_NewStringObj((key), -1), (valueObj))
	PUT("pid", Tcl_NewIntObj((int) pid));
	PUT("state", Tcl_NewStringObj(stateNames[copy.state], -1));
	PUT("for", Tcl_NewDoubleObj(nowNs > copy.since
		? (double) (nowNs - copy.since) / 1e9 : 0.0));
	PUT("served", Tcl_NewWideIntObj((Tcl_WideInt) copy.served));
	if (copy.state == SLOT_WAITING && copy.handed > copy.since) {
	    /* Handed a connection since it asked: it has not taken it. */
	    PUT("handed", Tcl_NewDoubleObj(nowNs > copy.handed
		    ? (double) (nowNs - copy.handed) / 1e9 : 0.0));
	}
	if (copy.state == SLOT_SERVING) {
	    char text[INET6_ADDRSTRLEN];

	    if (inet_ntop(copy.family, copy.peerAddr, text, sizeof(text))
		    == NULL) {
		text[0] = '\0';
	    }
	    PUT("peer", Tcl_ObjPrintf("%s %u", text, copy.peerPort));
	}
#undef PUT
	Tcl_ListObjAppendElement(NULL, listObj, workerObj);
    }
    return listObj;
}

/*
 *----------------------------------------------------------------------
 *
 * SpawnCmd --
 *
 *	$cmd spawn ?-parentdeath signal? command ?arg ...?
 *	Starts command as a new program (no shell; PATH searched as 'exec'
 *	does) that adopts the queues of every port this process knows when
 *	it loads the package. With -parentdeath, the program gets signal if
 *	this process dies (Linux: PR_SET_PDEATHSIG, set when it adopts the
 *	queues, so even while it loads its code; elsewhere ignored). The hand-over travels on a fresh SOCK_SEQPACKET
 *	socketpair: every message is queued on it before the program
 *	exists, the sending end is closed, and the program gets the
 *	receiving end as its standard input (the pipeline's "<@"
 *	redirection dup2()s it there); SPAWN_ENV tells it that a hand-over
 *	waits and with which token. Every descriptor stays close-on-exec
 *	throughout, so a program another thread starts meanwhile inherits
 *	none; descriptors in flight are in no process's table.
 *
 * Results:
 *	TCL_OK with a readable channel carrying the program's standard
 *	output and error, as from 'open |command 2>@1' ('pid' gives its
 *	process id, 'close' its exit status); or TCL_ERROR, with no process
 *	left behind.
 *
 * Side effects:
 *	SPAWN_ENV is set in the environment while the program starts.
 *
 *----------------------------------------------------------------------
 */

static int
SpawnCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Channel handOverChan, chan;
    Queue *queuePtr;
    Message message;
    const char **argv;
    char token[3 * TCL_INTEGER_SPACE + 3];
    uint64_t nonce;
    int pair[2], argc, i, error = 0, deathSignal = 0;

    if (objc >= 3 && strcmp(Tcl_GetString(objv[2]), "-parentdeath") == 0) {
	if (objc < 5) {
	    Tcl_WrongNumArgs(interp, 2, objv,
		    "?-parentdeath signal? command ?arg ...?");
	    return TCL_ERROR;
	}
	if (ParseSignal(interp, objv[3], 0, &deathSignal) != TCL_OK) {
	    return TCL_ERROR;
	}
	objc -= 2;
	objv += 2;
    }
    if (objc < 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "?-parentdeath signal? command ?arg ...?");
	return TCL_ERROR;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't spawn \"%s\": %s", Tcl_GetString(objv[2]),
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    nonce = MakeNonce(pair[0]);

    pthread_mutex_lock(&queueLock);
    for (queuePtr = firstQueuePtr; queuePtr != NULL && error == 0;
	    queuePtr = queuePtr->nextPtr) {
	memset(&message, 0, sizeof(message));
	message.magic = MESSAGE_MAGIC;
	message.kind = KIND_ADOPT_BOARD;
	message.port = queuePtr->port;
	message.sequence = nonce;
	/* Numeric, so it always fits; memset() left its terminator. */
	memcpy(&message.addr, queuePtr->myaddr,
		strnlen(queuePtr->myaddr, sizeof(message.addr) - 1));
	if (ancil_send_fd(pair[0], queuePtr->boardFd, &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	    break;
	}
	message.kind = KIND_ADOPT_ASK;
	if (ancil_send_fd(pair[0], queuePtr->askFds[1], &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	    break;
	}
	message.kind = KIND_ADOPT_READY;
	if (ancil_send_fd(pair[0], queuePtr->readyFds[0], &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	}
    }
    pthread_mutex_unlock(&queueLock);
    close(pair[0]);
    if (error != 0) {
	close(pair[1]);
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't hand the queues to \"%s\": %s",
		Tcl_GetString(objv[2]), Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    handOverChan = Tcl_MakeFileChannel((ClientData) (intptr_t) pair[1],
	    TCL_READABLE);
    Tcl_RegisterChannel(interp, handOverChan);
    argc = objc - 2 + 3;
    argv = (const char **) ckalloc((argc + 1) * sizeof(char *));
    for (i = 2; i < objc; i++) {
	argv[i - 2] = Tcl_GetString(objv[i]);
    }
    argv[objc - 2] = "<@";
    argv[objc - 1] = Tcl_GetChannelName(handOverChan);
    argv[objc] = "2>@1";
    argv[argc] = NULL;

    snprintf(token, sizeof(token), "%ld %llu %d", (long) getpid(),
	    (unsigned long long) nonce, deathSignal);
    Tcl_SetVar2(interp, "env", SPAWN_ENV, token, TCL_GLOBAL_ONLY);
    chan = Tcl_OpenCommandChannel(interp, argc, argv, TCL_STDOUT);
    Tcl_UnsetVar2(interp, "env", SPAWN_ENV, TCL_GLOBAL_ONLY);
    ckfree((char *) argv);

    /*
     * The program has its copy; ours goes, and with it the queued hand-
     * over if the program could not be started.
     */

    Tcl_DetachChannel(interp, handOverChan);
    Tcl_Close(NULL, handOverChan);
    if (chan == NULL) {
	return TCL_ERROR;
    }
    Tcl_RegisterChannel(interp, chan);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(Tcl_GetChannelName(chan), -1));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * MakeNonce --
 *
 *	A number a stale or foreign SPAWN_ENV will not carry: from the
 *	kernel's random source if it answers, else from the clock, the
 *	process id and the hand-over socket's number.
 *
 * Results:
 *	The nonce.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static uint64_t
MakeNonce(
    int salt)
{
    struct timespec now;
    uint64_t nonce = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

    if (fd >= 0) {
	if (read(fd, &nonce, sizeof(nonce)) != (ssize_t) sizeof(nonce)) {
	    nonce = 0;
	}
	close(fd);
    }
    clock_gettime(CLOCK_REALTIME, &now);
    return nonce ^ ((uint64_t) now.tv_sec << 32) ^ (uint64_t) now.tv_nsec
	    ^ ((uint64_t) getpid() << 16) ^ (uint64_t) salt;
}

/*
 *----------------------------------------------------------------------
 *
 * IsQueueSocket --
 *
 *	Checks that fd is the kind of socket a queue is made of: a Unix
 *	domain SOCK_SEQPACKET socket.
 *
 * Results:
 *	1 if it is, else 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
IsQueueSocket(
    int fd)
{
    struct sockaddr_storage addr;
    int value;
    socklen_t length = sizeof(value);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) < 0
	    || value != SOCK_SEQPACKET) {
	return 0;
    }

    /*
     * The domain from the address's family, as POSIX has no SO_DOMAIN (an
     * unnamed socket's address has its family too).
     */

    length = sizeof(addr);
    return (getsockname(fd, (struct sockaddr *) &addr, &length) == 0
	    && length >= offsetof(struct sockaddr_storage, ss_family)
		+ sizeof(addr.ss_family)
	    && addr.ss_family == AF_UNIX);
}

/*
 *----------------------------------------------------------------------
 *
 * AdoptQueues --
 *
 *	Once per process, at the first load of the package: if this program
 *	was started by 'spawn', adopts the queues handed over on its
 *	standard input. Nothing is trusted: SPAWN_ENV must name the process
 *	that made the socket on standard input (SO_PEERCRED), that socket
 *	must be a Unix SOCK_SEQPACKET one, and every message must carry the
 *	token and a queue socket. Otherwise the variable is stale (inherited
 *	from a spawned worker by a program it ran, say) and is ignored, and
 *	standard input is not touched.
 *
 * Results:
 *	None. A failure after the hand-over was recognised is left in
 *	adoptError for Socketserver_Init to report.
 *
 * Side effects:
 *	Adopted queues are added as in a forked child (not listening,
 *	counters at 0); standard input is reopened on /dev/null; SPAWN_ENV
 *	is removed from the environment either way.
 *
 *----------------------------------------------------------------------
 */

static void
AdoptQueues(void)
{
    const char *value = getenv(SPAWN_ENV);
    unsigned long long nonce;
    long spawner;
    struct stat info;
    Message message;
    ssize_t got;
    int fd, askFd = -1, boardFd = -1, nullFd, deathSignal = 0;
    sigset_t none;

    if (value == NULL) {
	return;
    }
    if (sscanf(value, "%ld %llu %d", &spawner, &nonce, &deathSignal) < 2
	    || !IsQueueSocket(0) || !HandedOverBy(spawner, nonce)) {
	unsetenv(SPAWN_ENV);
	return;
    }
    unsetenv(SPAWN_ENV);

    /*
     * A spawned program starts with no signal blocked, whatever the
     * spawner had blocked (a program 'reexec' started blocks some).
     */

    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    if (deathSignal > 0 && deathSignal < NSIG) {
	adoptError = WatchParent(spawner, deathSignal);
    }

    for (;;) {
	got = ancil_recv_fd(0, &fd, &message, sizeof(message), MSG_DONTWAIT);
	if (got == 0 || (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
	    /* All of it read: the spawner closed its end before exec. */
	    break;
	}
	if (got < 0) {
	    adoptError = errno;
	    break;
	}
	/*
	 * Each port comes as its scoreboard, then its queue's asking end,
	 * then its ready queue's reading end.
	 */

	if ((size_t) got != sizeof(message) || message.magic != MESSAGE_MAGIC
		|| message.sequence != nonce || message.port > 65535
		|| (message.kind == KIND_ADOPT_BOARD
		    ? (boardFd >= 0 || fstat(fd, &info) < 0
			|| !S_ISREG(info.st_mode)
			|| info.st_size != (off_t) BOARD_BYTES)
		    : (!IsQueueSocket(fd) || boardFd < 0
			|| (message.kind == KIND_ADOPT_READY) != (askFd >= 0)
			|| (message.kind != KIND_ADOPT_ASK
			    && message.kind != KIND_ADOPT_READY)))) {
	    close(fd);
	    adoptError = EBADMSG;
	    break;
	}
	if (message.kind == KIND_ADOPT_BOARD) {
	    boardFd = fd;
	} else if (message.kind == KIND_ADOPT_ASK) {
	    askFd = fd;
	} else {
	    int askFds[2], readyFds[2];
	    Queue *queuePtr;
	    Slot *board = MapBoard(boardFd);
	    int error = (board == NULL) ? errno : EBADMSG;

	    askFds[0] = -1;
	    askFds[1] = askFd;
	    readyFds[0] = fd;
	    readyFds[1] = -1;
	    askFd = -1;
	    pthread_mutex_lock(&queueLock);
	    if (board == NULL || FindQueue(message.port) != NULL) {
		adoptError = error;
		pthread_mutex_unlock(&queueLock);
		if (board != NULL) {
		    munmap(board, BOARD_BYTES);
		}
		close(askFds[1]);
		close(fd);
		break;
	    }
	    queuePtr = AddQueue(message.port, askFds, readyFds, boardFd,
		    board);
	    boardFd = -1;
	    ((char *) &message.addr)[sizeof(message.addr) - 1] = '\0';
	    snprintf(queuePtr->myaddr, sizeof(queuePtr->myaddr), "%s",
		    (char *) &message.addr);
	    pthread_mutex_unlock(&queueLock);
	}
    }
    if (askFd >= 0) {
	close(askFd);
    }
    if (boardFd >= 0) {
	close(boardFd);
    }

    /*
     * Standard input was the hand-over's socket: nothing more comes on
     * it. The program's own reads of stdin see end of file.
     */

    nullFd = open("/dev/null", O_RDONLY);
    if (nullFd >= 0 && nullFd != 0) {
	dup2(nullFd, 0);
	close(nullFd);
    } else if (nullFd < 0 && adoptError == 0) {
	adoptError = errno;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * HandedOverBy --
 *
 *	Whether the queue socket on standard input carries a hand-over from
 *	process spawner with token nonce. On Linux the spawner must be the
 *	process that made the socket (SO_PEERCRED). POSIX cannot tell who
 *	made a socket: there the first message waiting must carry the token
 *	(it is looked at, not read), or, if none waits (the spawner knew no
 *	port), the spawner must be this program's parent.
 *
 * Results:
 *	1 if so, else 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
HandedOverBy(
    long spawner,
    uint64_t nonce)
{
#ifdef SS_LINUX
    struct ucred peer;
    socklen_t length = sizeof(peer);

    (void) nonce;
    return (getsockopt(0, SOL_SOCKET, SO_PEERCRED, &peer, &length) == 0
	    && (long) peer.pid == spawner);
#else
    Message message;
    ssize_t got;

    do {
	/* No control buffer: a descriptor the message carries stays. */
	got = recv(0, &message, sizeof(message), MSG_PEEK | MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got == 0) {
	return ((long) getppid() == spawner);
    }
    return (got == (ssize_t) sizeof(message)
	    && message.magic == MESSAGE_MAGIC && message.sequence == nonce);
#endif
}

#ifndef SS_LINUX
static long parentPid;			/* WatchParentLife's: the spawner, */
static int parentDeathSignal;		/* and the signal its death sends.
					 * Set once, before the thread
					 * starts. */
#endif

/*
 *----------------------------------------------------------------------
 *
 * WatchParent --
 *
 *	A program spawned with -parentdeath: has deathSignal sent to this
 *	process when spawner, its parent, dies, even if that is now. On
 *	Linux the kernel does it (PR_SET_PDEATHSIG). POSIX has no such
 *	request: a thread (WatchParentLife) looks every PARENT_POLL_MS
 *	whether the parent is still the spawner.
 *
 * Results:
 *	0, or an errno value (nothing watches then).
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
WatchParent(
    long spawner,
    int deathSignal)
{
#ifdef SS_LINUX
    /*
     * The spawner may have died before this: then it is not our parent
     * any more, and the signal is due now.
     */

    if (prctl(PR_SET_PDEATHSIG, deathSignal) == 0
	    && (long) getppid() != spawner) {
	raise(deathSignal);
    }
    return 0;
#else
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    int error;

    parentPid = spawner;
    parentDeathSignal = deathSignal;
    error = pthread_attr_init(&attr);
    if (error != 0) {
	return error;
    }
    error = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (error == 0) {
	/* Its signals go to the threads that run scripts. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	error = pthread_create(&thread, &attr, WatchParentLife, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_attr_destroy(&attr);
    return error;
#endif
}

#ifndef SS_LINUX
/*
 *----------------------------------------------------------------------
 *
 * WatchParentLife --
 *
 *	Portable build, a spawned program's thread: once its parent is no
 *	longer the spawner (a process whose parent dies gets another),
 *	sends the process the signal, and ends. It never touches Tcl.
 *
 * Results:
 *	NULL.
 *
 * Side effects:
 *	See above. Like the rest of the process's threads, it is not in a
 *	forked child, nor in a program this one execs.
 *
 *----------------------------------------------------------------------
 */

static void *
WatchParentLife(
    void *clientData)
{
    struct timespec pause = {0, PARENT_POLL_MS * 1000000L};

    (void) clientData;
    while ((long) getppid() == parentPid) {
	nanosleep(&pause, NULL);
    }
    kill(getpid(), parentDeathSignal);
    return NULL;
}
#endif

/*
 * The signals, as 'kill -l' names them. A script may be set for those
 * marked catchable; ::socketserver::kill sends any of them. Signals that
 * report a fault (SEGV, BUS, FPE, ILL, ...) must be handled in the thread
 * that caused them, and KILL and STOP cannot be caught at all.
 */

static const struct {
    const char *name;
    int number;
    int catchable;		/* 1 if ::socketserver::signal takes it. */
} signalNames[] = {
    {"HUP", SIGHUP, 1}, {"INT", SIGINT, 1}, {"QUIT", SIGQUIT, 1},
    {"USR1", SIGUSR1, 1}, {"USR2", SIGUSR2, 1}, {"PIPE", SIGPIPE, 1},
    {"ALRM", SIGALRM, 1}, {"TERM", SIGTERM, 1}, {"CHLD", SIGCHLD, 1},
    {"CONT", SIGCONT, 1}, {"TSTP", SIGTSTP, 1}, {"TTIN", SIGTTIN, 1},
    {"TTOU", SIGTTOU, 1}, {"URG", SIGURG, 1}, {"XCPU", SIGXCPU, 1},
    {"XFSZ", SIGXFSZ, 1}, {"VTALRM", SIGVTALRM, 1}, {"PROF", SIGPROF, 1},
    {"WINCH", SIGWINCH, 1}, {"IO", SIGIO, 1},
#ifdef SIGPWR
    {"PWR", SIGPWR, 1},
#endif
    {"KILL", SIGKILL, 0}, {"STOP", SIGSTOP, 0},
    {NULL, 0, 0}
};

/*
 *----------------------------------------------------------------------
 *
 * CatchSignal --
 *
 *	The C signal handler: async-signal-safe, so it only notes the
 *	signal and wakes the thread whose script handles it. A burst that
 *	comes faster than the script runs is coalesced; the script always
 *	runs after the last signal of it.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	A byte in the wake pipe (none if the pipe is full: it is readable
 *	then anyway).
 *
 *----------------------------------------------------------------------
 */

static void
CatchSignal(
    int signo)
{
    int savedErrno = errno, fd = signalWakeFd[signo];

    signalCaught[signo] = 1;
    if (fd >= 0) {
	ssize_t written = write(fd, "", 1);

	(void) written;
    }
    errno = savedErrno;
}

/*
 *----------------------------------------------------------------------
 *
 * ThreadWakePipe --
 *
 *	signalLock held: the wake pipe of the calling thread, made and
 *	watched the first time.
 *
 * Results:
 *	The pipe, or NULL with a POSIX error in interp.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static WakePipe *
ThreadWakePipe(
    Tcl_Interp *interp)
{
    Tcl_ThreadId self = Tcl_GetCurrentThread();
    WakePipe *pipePtr;
    int fds[2];

    for (pipePtr = firstWakePipe; pipePtr != NULL;
	    pipePtr = pipePtr->nextPtr) {
	if (pipePtr->thread == self && pipePtr->generation == forkGeneration) {
	    return pipePtr;
	}
    }
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't create the signal pipe: %s", Tcl_PosixError(interp)));
	return NULL;
    }
    pipePtr = (WakePipe *) ckalloc(sizeof(WakePipe));
    pipePtr->thread = self;
    pipePtr->fds[0] = fds[0];
    pipePtr->fds[1] = fds[1];
    pipePtr->generation = forkGeneration;
    pipePtr->nextPtr = firstWakePipe;
    firstWakePipe = pipePtr;
    Tcl_CreateFileHandler(fds[0], TCL_READABLE, RunCaughtSignals, pipePtr);
    return pipePtr;
}

/*
 *----------------------------------------------------------------------
 *
 * RunCaughtSignals --
 *
 *	File handler of a thread's wake pipe: runs, at global level in its
 *	interpreter, the script of each signal caught since it last ran
 *	that this thread handles.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Whatever the scripts do; their errors go to the background error
 *	handler.
 *
 *----------------------------------------------------------------------
 */

static void
RunCaughtSignals(
    ClientData clientData,
    int mask)
{
    WakePipe *pipePtr = clientData;
    char drain[64];
    int signo;

    (void) mask;
    pthread_mutex_lock(&signalLock);
    if (pipePtr->generation != forkGeneration) {
	/* Made by the parent of a fork; here fds[0] is /dev/null. */
	WakePipe **linkPtr = &firstWakePipe;

	while (*linkPtr != pipePtr) {
	    linkPtr = &(*linkPtr)->nextPtr;
	}
	*linkPtr = pipePtr->nextPtr;
	pthread_mutex_unlock(&signalLock);
	Tcl_DeleteFileHandler(pipePtr->fds[0]);
	close(pipePtr->fds[0]);
	ckfree((char *) pipePtr);
	return;
    }
    pthread_mutex_unlock(&signalLock);

    while (read(pipePtr->fds[0], drain, sizeof(drain)) > 0) {
	/* Empty it: the flags say which signals came. */
    }
    for (signo = 1; signo < NSIG; signo++) {
	SignalHandler *handlerPtr;
	Tcl_Interp *interp;
	Tcl_Obj *scriptObj;
	int code;

	if (!signalCaught[signo]) {
	    continue;
	}
	pthread_mutex_lock(&signalLock);
	handlerPtr = signalHandlers[signo];
	if (handlerPtr == NULL || handlerPtr->thread != pipePtr->thread
		|| handlerPtr->generation != forkGeneration) {
	    pthread_mutex_unlock(&signalLock);
	    continue;
	}
	signalCaught[signo] = 0;
	interp = handlerPtr->interp;
	scriptObj = handlerPtr->scriptObj;
	Tcl_IncrRefCount(scriptObj);
	pthread_mutex_unlock(&signalLock);

	Tcl_Preserve(interp);
	code = Tcl_EvalObjEx(interp, scriptObj, TCL_EVAL_GLOBAL);
	if (code != TCL_OK) {
	    Tcl_AppendObjToErrorInfo(interp, Tcl_ObjPrintf(
		    "\n    (socketserver signal script for SIG%s)",
		    Tcl_SignalId(signo) + 3));
	    Tcl_BackgroundException(interp, code);
	}
	Tcl_Release(interp);
	Tcl_DecrRefCount(scriptObj);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * RemoveSignalScript --
 *
 *	signalLock held: removes the script of signo, if any, and puts back
 *	the action that was there before it.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	A signal caught but not yet run is dropped with it.
 *
 *----------------------------------------------------------------------
 */

static void
RemoveSignalScript(
    int signo)
{
    SignalHandler *handlerPtr = signalHandlers[signo];

    if (handlerPtr == NULL) {
	return;
    }
    if (handlerPtr->generation == forkGeneration) {
	sigaction(signo, &handlerPtr->previous, NULL);
    }
    signalWakeFd[signo] = -1;
    signalCaught[signo] = 0;
    signalHandlers[signo] = NULL;
    Tcl_DecrRefCount(handlerPtr->scriptObj);
    ckfree((char *) handlerPtr);
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetSignals --
 *
 *	In the child of a fork, queueLock and signalLock held: puts back
 *	every action a script replaced, so the child starts with the
 *	actions it would have had, and replaces the wake pipes' reading
 *	ends by nullFd (a file handler may still watch the number) and
 *	closes their writing ends, so the child never shares its parent's.
 *	Only async-signal-safe calls.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The scripts and pipes become stale; they are freed when next met.
 *
 *----------------------------------------------------------------------
 */

static void
ForgetSignals(
    int nullFd)
{
    WakePipe *pipePtr;
    int signo;

    for (signo = 1; signo < NSIG; signo++) {
	SignalHandler *handlerPtr = signalHandlers[signo];

	if (handlerPtr != NULL && handlerPtr->generation == forkGeneration) {
	    sigaction(signo, &handlerPtr->previous, NULL);
	}
	signalWakeFd[signo] = -1;
	signalCaught[signo] = 0;
    }
    for (pipePtr = firstWakePipe; pipePtr != NULL;
	    pipePtr = pipePtr->nextPtr) {
	if (pipePtr->generation == forkGeneration) {
	    if (nullFd < 0
		    || dup3(nullFd, pipePtr->fds[0], O_CLOEXEC) < 0) {
		close(pipePtr->fds[0]);
	    }
	    CloseFd(&pipePtr->fds[1]);
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * ParseSignal --
 *
 *	Reads a signal's name, as 'kill -l' names it, with or without
 *	"SIG". Only catchable signals when catchable is 1; else any signal
 *	of the table, or a number from 0 (no signal: the target's existence
 *	is checked) below NSIG.
 *
 * Results:
 *	TCL_OK with *signoPtr set; or TCL_ERROR with a message listing the
 *	names and -errorcode {TCL LOOKUP SIGNAL name}.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ParseSignal(
    Tcl_Interp *interp,
    Tcl_Obj *objPtr,
    int catchable,
    int *signoPtr)
{
    const char *name = Tcl_GetString(objPtr);
    Tcl_Obj *listObj;
    int i;

    if (!catchable && GetIntInRange(objPtr, 0, NSIG - 1, signoPtr)) {
	return TCL_OK;
    }
    if (strncmp(name, "SIG", 3) == 0) {
	name += 3;
    }
    for (i = 0; signalNames[i].name != NULL; i++) {
	if (strcmp(name, signalNames[i].name) == 0
		&& (signalNames[i].catchable || !catchable)) {
	    *signoPtr = signalNames[i].number;
	    return TCL_OK;
	}
    }
    listObj = Tcl_NewObj();
    for (i = 0; signalNames[i].name != NULL; i++) {
	if (signalNames[i].catchable || !catchable) {
	    Tcl_AppendPrintfToObj(listObj, "%s%s", (i > 0 ? ", " : ""),
		    signalNames[i].name);
	}
    }
    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
	    "bad signal \"%s\": must be one of %s (with or without SIG)%s",
	    Tcl_GetString(objPtr), Tcl_GetString(listObj),
	    (catchable ? "" : ", or a number")));
    Tcl_DecrRefCount(listObj);
    Tcl_SetErrorCode(interp, "TCL", "LOOKUP", "SIGNAL", Tcl_GetString(objPtr),
	    NULL);
    return TCL_ERROR;
}

/*
 *----------------------------------------------------------------------
 *
 * SignalObjCmd --
 *
 *	::socketserver::signal signal ?script?
 *	Sets, removes (empty script) or returns (no script) the script this
 *	process runs for signal, named as 'kill -l' names it, with or
 *	without "SIG". The script runs at global level in the interpreter
 *	that set it, from its thread's event loop.
 *
 * Results:
 *	TCL_OK with the current script (no script given) or empty; or
 *	TCL_ERROR.
 *
 * Side effects:
 *	Installs or removes the C handler.
 *
 *----------------------------------------------------------------------
 */

static int
SignalObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    const char *name;
    SignalHandler *handlerPtr;
    WakePipe *pipePtr;
    Tcl_Size length;
    sigset_t unblock;
    int signo;

    (void) clientData;
    if (objc != 2 && objc != 3) {
	Tcl_WrongNumArgs(interp, 1, objv, "signal ?script?");
	return TCL_ERROR;
    }
    if (ParseSignal(interp, objv[1], 1, &signo) != TCL_OK) {
	return TCL_ERROR;
    }
    name = Tcl_GetString(objv[1]);
    if (strncmp(name, "SIG", 3) == 0) {
	name += 3;
    }

    pthread_mutex_lock(&signalLock);
    handlerPtr = signalHandlers[signo];
    if (handlerPtr != NULL && handlerPtr->generation != forkGeneration) {
	/* Set in the parent of a fork: here the action is back already. */
	RemoveSignalScript(signo);
	handlerPtr = NULL;
    }
    if (objc == 2) {
	if (handlerPtr != NULL) {
	    Tcl_SetObjResult(interp, handlerPtr->scriptObj);
	}
	pthread_mutex_unlock(&signalLock);
	return TCL_OK;
    }
    Tcl_GetStringFromObj(objv[2], &length);
    if (length == 0) {
	RemoveSignalScript(signo);
	pthread_mutex_unlock(&signalLock);
	Tcl_ResetResult(interp);
	return TCL_OK;
    }

    pipePtr = ThreadWakePipe(interp);
    if (pipePtr == NULL) {
	pthread_mutex_unlock(&signalLock);
	return TCL_ERROR;
    }
    if (handlerPtr == NULL) {
	struct sigaction action;

	handlerPtr = (SignalHandler *) ckalloc(sizeof(SignalHandler));
	memset(&action, 0, sizeof(action));
	action.sa_handler = CatchSignal;
	action.sa_flags = SA_RESTART;
	sigemptyset(&action.sa_mask);
	signalWakeFd[signo] = pipePtr->fds[1];
	if (sigaction(signo, &action, &handlerPtr->previous) < 0) {
	    signalWakeFd[signo] = -1;
	    pthread_mutex_unlock(&signalLock);
	    ckfree((char *) handlerPtr);
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "couldn't handle SIG%s: %s", name,
		    Tcl_PosixError(interp)));
	    return TCL_ERROR;
	}
	handlerPtr->generation = forkGeneration;
	handlerPtr->scriptObj = NULL;
	signalHandlers[signo] = handlerPtr;
    }
    handlerPtr->interp = interp;
    handlerPtr->thread = pipePtr->thread;
    signalWakeFd[signo] = pipePtr->fds[1];

    /*
     * A program that 'reexec' started has the signals with scripts
     * blocked until it sets its own (a signal that came meanwhile is
     * pending, and comes now).
     */

    sigemptyset(&unblock);
    sigaddset(&unblock, signo);
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
    Tcl_IncrRefCount(objv[2]);
    if (handlerPtr->scriptObj != NULL) {
	Tcl_DecrRefCount(handlerPtr->scriptObj);
    }
    handlerPtr->scriptObj = objv[2];
    pthread_mutex_unlock(&signalLock);
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * KillObjCmd --
 *
 *	::socketserver::kill signal pid
 *	Sends signal (a name as ::socketserver::signal takes, KILL, STOP or
 *	a number) to process pid, or to process group -pid, with kill(2):
 *	no outside program, so it works in a slim image and in a process
 *	with no descriptor to spare for a fork.
 *
 * Results:
 *	TCL_OK with an empty result; or TCL_ERROR, with -errorcode {POSIX
 *	ESRCH ...} when there is no such process (or it has been reaped),
 *	{POSIX EPERM ...} when it is not ours to signal.
 *
 * Side effects:
 *	The signal.
 *
 *----------------------------------------------------------------------
 */

static int
KillObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int signo, pid;

    (void) clientData;
    if (objc != 3) {
	Tcl_WrongNumArgs(interp, 1, objv, "signal pid");
	return TCL_ERROR;
    }
    if (ParseSignal(interp, objv[1], 0, &signo) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * 0 and -1 would signal our own group or every process we may
     * signal: never what a supervisor means.
     */

    if (!GetIntInRange(objv[2], -INT_MAX, INT_MAX, &pid)
	    || pid == 0 || pid == -1) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"expected a process id, or minus a process group id, but got "
		"\"%s\"", Tcl_GetString(objv[2])));
	Tcl_SetErrorCode(interp, "TCL", "VALUE", "PID", NULL);
	return TCL_ERROR;
    }
    if (kill((pid_t) pid, signo) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't send signal %s to %s %d: %s", Tcl_GetString(objv[1]),
		(pid < 0 ? "process group" : "process"), (pid < 0 ? -pid : pid),
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * GetPid --
 *
 *	Reads a process id: a whole number from 1 up that fits a pid.
 *
 * Results:
 *	TCL_OK with *pidPtr set, or TCL_ERROR with a message and -errorcode
 *	{TCL VALUE PID}.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
GetPid(
    Tcl_Interp *interp,
    Tcl_Obj *objPtr,
    int *pidPtr)
{
    if (!GetIntInRange(objPtr, 1, INT_MAX, pidPtr)) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"expected a process id but got \"%s\"", Tcl_GetString(objPtr)));
	Tcl_SetErrorCode(interp, "TCL", "VALUE", "PID", NULL);
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * ExitedObjCmd --
 *
 *	::socketserver::exited pid
 *	Tells whether child process pid has ended, without collecting its
 *	status (waitid() with WNOWAIT): 'close' of the channel that 'spawn'
 *	returned still reports how it ended. A supervisor calls it for its
 *	workers when SIGCHLD comes, which tells it of an exit even while a
 *	program that a worker started holds the worker's output open.
 *
 * Results:
 *	TCL_OK with 1 or 0; or TCL_ERROR, -errorcode {POSIX ECHILD ...}
 *	if pid is not a child of this process waiting to be collected.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ExitedObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    siginfo_t info;
    int pid = 0, result;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "pid");
	return TCL_ERROR;
    }
    if (GetPid(interp, objv[1], &pid) != TCL_OK) {
	return TCL_ERROR;
    }
    memset(&info, 0, sizeof(info));
    do {
	result = waitid(P_PID, (id_t) pid, &info, WEXITED | WNOHANG | WNOWAIT);
    } while (result < 0 && errno == EINTR);
    if (result < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't wait for process %d: %s", pid,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewBooleanObj(info.si_pid != 0));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * WaitObjCmd --
 *
 *	::socketserver::wait pid
 *	Collects child process pid if it has ended (waitpid() with WNOHANG):
 *	for children that no channel of Tcl's owns, such as the workers of
 *	the program that was this process before 'reexec'.
 *
 * Results:
 *	TCL_OK with an empty result while pid runs, else {CHILDSTATUS pid
 *	code} or {CHILDKILLED pid SIGNAME}, as Tcl's -errorcode says it; or
 *	TCL_ERROR, {POSIX ECHILD ...} if pid is no child of this process.
 *
 * Side effects:
 *	The child is collected.
 *
 *----------------------------------------------------------------------
 */

static int
WaitObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj *resultObj;
    pid_t got;
    int pid = 0, status;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "pid");
	return TCL_ERROR;
    }
    if (GetPid(interp, objv[1], &pid) != TCL_OK) {
	return TCL_ERROR;
    }
    do {
	got = waitpid((pid_t) pid, &status, WNOHANG);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't wait for process %d: %s", pid,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    if (got == 0) {
	return TCL_OK;
    }
    resultObj = Tcl_NewObj();
    if (WIFEXITED(status)) {
	Tcl_ListObjAppendElement(NULL, resultObj,
		Tcl_NewStringObj("CHILDSTATUS", -1));
	Tcl_ListObjAppendElement(NULL, resultObj, Tcl_NewIntObj(pid));
	Tcl_ListObjAppendElement(NULL, resultObj,
		Tcl_NewIntObj(WEXITSTATUS(status)));
    } else {
	Tcl_ListObjAppendElement(NULL, resultObj,
		Tcl_NewStringObj("CHILDKILLED", -1));
	Tcl_ListObjAppendElement(NULL, resultObj, Tcl_NewIntObj(pid));
	Tcl_ListObjAppendElement(NULL, resultObj, Tcl_NewStringObj(
		Tcl_SignalId(WIFSIGNALED(status) ? WTERMSIG(status) : 0), -1));
    }
    Tcl_SetObjResult(interp, resultObj);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * DescriptorsObjCmd --
 *
 *	::socketserver::descriptors
 *	How many descriptors this process has open and may open: what a
 *	supervisor checks before it starts workers, each of which costs it
 *	descriptors.
 *
 * Results:
 *	TCL_OK with a dict: open (descriptors open now), limit and hardlimit
 *	(RLIMIT_NOFILE's soft and hard limits); or TCL_ERROR.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
DescriptorsObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    struct rlimit limit;
    Tcl_Obj *resultObj;
    DIR *dir;
    rlim_t fd;
    long open = 0;

    (void) clientData;
    if (objc != 1) {
	Tcl_WrongNumArgs(interp, 1, objv, NULL);
	return TCL_ERROR;
    }
    if (getrlimit(RLIMIT_NOFILE, &limit) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't read the descriptor limit: %s",
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    /*
     * Linux lists them in /proc/self/fd (less the directory's own).
     * Elsewhere, or without /proc, they are counted below the soft limit,
     * where every one a process can open lies.
     */

    dir = opendir("/proc/self/fd");
    if (dir != NULL) {
	while (readdir(dir) != NULL) {
	    open++;
	}
	closedir(dir);
	open -= 3;		/* ".", ".." and the directory's own. */
    } else {
	for (fd = 0; fd < limit.rlim_cur && fd < INT_MAX; fd++) {
	    if (fcntl((int) fd, F_GETFD) >= 0) {
		open++;
	    }
	}
    }
    resultObj = Tcl_NewObj();
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj("open", -1),
	    Tcl_NewLongObj(open));
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj("limit", -1),
	    Tcl_NewWideIntObj((Tcl_WideInt) (limit.rlim_cur < INT_MAX
	    ? limit.rlim_cur : INT_MAX)));
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj("hardlimit", -1),
	    Tcl_NewWideIntObj((Tcl_WideInt) (limit.rlim_max < INT_MAX
	    ? limit.rlim_max : INT_MAX)));
    Tcl_SetObjResult(interp, resultObj);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * NotifyObjCmd --
 *
 *	::socketserver::notify state
 *	Tells the service manager about this process, as sd_notify(3) does:
 *	one datagram to the Unix socket named by NOTIFY_SOCKET (a leading @
 *	names an abstract socket). A state with a line RELOADING=1 gets
 *	MONOTONIC_USEC= added, which systemd's Type=notify-reload requires
 *	and Tcl cannot read (CLOCK_MONOTONIC).
 *
 * Results:
 *	TCL_OK with 1 if sent, 0 if NOTIFY_SOCKET is not set; or TCL_ERROR.
 *
 * Side effects:
 *	The datagram.
 *
 *----------------------------------------------------------------------
 */

static int
NotifyObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un address;
    struct timespec now;
    Tcl_Obj *messageObj;
    Tcl_Size length;
    const char *message, *line;
    socklen_t addressLength;
    size_t pathLength;
    ssize_t sent;
    int fd, error, reloading = 0;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "state");
	return TCL_ERROR;
    }
    if (path == NULL || path[0] == '\0') {
	Tcl_SetObjResult(interp, Tcl_NewBooleanObj(0));
	return TCL_OK;
    }
    pathLength = strlen(path);
    if ((path[0] != '/' && path[0] != '@')
	    || pathLength >= sizeof(address.sun_path)) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't notify the service manager: NOTIFY_SOCKET \"%s\" is "
		"not a Unix socket's path or @name", path));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOTIFY", NULL);
	return TCL_ERROR;
    }
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    memcpy(address.sun_path, path, pathLength);
    if (path[0] == '@') {
	address.sun_path[0] = '\0';
    }
    addressLength = (socklen_t) (offsetof(struct sockaddr_un, sun_path)
	    + pathLength + (path[0] == '/'));

    messageObj = Tcl_DuplicateObj(objv[1]);
    Tcl_IncrRefCount(messageObj);
    message = Tcl_GetStringFromObj(messageObj, &length);
    for (line = message; line != NULL && !reloading; line = strchr(line, '\n')) {
	if (line[0] == '\n') {
	    line++;
	}
	reloading = (strncmp(line, "RELOADING=1", 11) == 0
		&& (line[11] == '\n' || line[11] == '\0'));
    }
    if (reloading) {
	char usec[48];

	clock_gettime(CLOCK_MONOTONIC, &now);
	snprintf(usec, sizeof(usec), "\nMONOTONIC_USEC=%llu",
		(unsigned long long) now.tv_sec * 1000000u
		+ (unsigned long long) now.tv_nsec / 1000u);
	Tcl_AppendToObj(messageObj, usec, -1);
	message = Tcl_GetStringFromObj(messageObj, &length);
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
	sent = -1;
    } else {
	do {
	    sent = sendto(fd, message, (size_t) length, MSG_NOSIGNAL,
		    (struct sockaddr *) &address, addressLength);
	} while (sent < 0 && errno == EINTR);
	error = errno;
	close(fd);
	errno = error;
    }
    Tcl_DecrRefCount(messageObj);
    if (sent < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't notify the service manager at %s: %s", path,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewBooleanObj(1));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * RunasObjCmd --
 *
 *	::socketserver::runas user ?group?
 *	Makes this process user's, for good: its supplementary groups
 *	(initgroups), then its group (group, or user's own), then its user,
 *	in that order, and checks that none can be taken back.
 *
 * Results:
 *	TCL_OK with an empty result; or TCL_ERROR, with -errorcode
 *	{SOCKETSERVER USER name} or {SOCKETSERVER GROUP name} for an unknown
 *	name, POSIX for a refused change (EPERM: not root), {SOCKETSERVER
 *	PRIVILEGES} if root could be taken back.
 *
 * Side effects:
 *	The process's credentials. On an error half-way, the process may
 *	hold some of the new ones: it should exit.
 *
 *----------------------------------------------------------------------
 */

static int
RunasObjCmd(
    ClientData clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    const char *user, *group = "";
    struct passwd *pw;
    struct group *gr;
    uid_t uid;
    gid_t gid;
#ifdef SS_LINUX
    int deathSignal = 0;
#endif

    (void) clientData;
    if (objc != 2 && objc != 3) {
	Tcl_WrongNumArgs(interp, 1, objv, "user ?group?");
	return TCL_ERROR;
    }
    user = Tcl_GetString(objv[1]);
    if (objc == 3) {
	group = Tcl_GetString(objv[2]);
    }

    /*
     * At start-up, in the one thread that runs: getpwnam() and getgrnam()
     * need not be reentrant here.
     */

    pw = getpwnam(user);
    if (pw == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("no such user \"%s\"", user));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "USER", user, NULL);
	return TCL_ERROR;
    }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    if (group[0] != '\0') {
	gr = getgrnam(group);
	if (gr == NULL) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf("no such group \"%s\"",
		    group));
	    Tcl_SetErrorCode(interp, "SOCKETSERVER", "GROUP", group, NULL);
	    return TCL_ERROR;
	}
	gid = gr->gr_gid;
    }
#ifdef SS_LINUX
    /*
     * A change of credentials clears the signal for the parent's death
     * ('spawn -parentdeath'): it is set again after. (The portable build's
     * watching thread is not affected.)
     */

    if (prctl(PR_GET_PDEATHSIG, &deathSignal) < 0) {
	deathSignal = 0;
    }
#endif
    if (initgroups(user, gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't become user \"%s\": %s", user,
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    if (getuid() != uid || geteuid() != uid || getgid() != gid
	    || getegid() != gid || (uid != 0 && setuid(0) == 0)) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't become user \"%s\" for good", user));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "PRIVILEGES", NULL);
	return TCL_ERROR;
    }
#ifdef SS_LINUX
    if (deathSignal > 0) {
	prctl(PR_SET_PDEATHSIG, deathSignal);
    }
#endif
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
	"cancel", "client", "close", "info", "reexec", "release", "server",
	"spawn", NULL
    };
    enum subcommands {
	SUB_CANCEL, SUB_CLIENT, SUB_CLOSE, SUB_INFO, SUB_REEXEC, SUB_RELEASE,
	SUB_SERVER, SUB_SPAWN
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
    case SUB_REEXEC:
	/* $cmd reexec port command ?arg ...? */
	return ReexecCmd(interp, objc, objv);
    case SUB_RELEASE:
	/* $cmd release channel */
	return ReleaseCmd(dataPtr, interp, objc, objv);
    case SUB_SERVER:
	/* $cmd server ?-ready s? ?-keepalive s? ?-myaddr addr? ?-backlog n?
	 * port | -fd fd ?port? */
	return ServerCmd(interp, objc, objv);
    case SUB_SPAWN:
	/* $cmd spawn command ?arg ...? */
	return SpawnCmd(interp, objc, objv);
    }
    return TCL_ERROR;
}

/*
 *----------------------------------------------------------------------
 *
 * DeleteInterpData --
 *
 *	Interpreter deletion: withdraws its pending requests and removes
 *	the signal scripts it set.
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

    int signo;

    while (dataPtr->firstReceiverPtr != NULL) {
	DropReceiver(dataPtr->firstReceiverPtr);
    }
    pthread_mutex_lock(&signalLock);
    for (signo = 1; signo < NSIG; signo++) {
	if (signalHandlers[signo] != NULL
		&& signalHandlers[signo]->interp == interp) {
	    RemoveSignalScript(signo);
	}
    }
    pthread_mutex_unlock(&signalLock);
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

    if (Tcl_InitStubs(interp, "8.6-", 0) == NULL) {
	return TCL_ERROR;
    }
    if (Tcl_GetVar2(interp, "tcl_platform", "threaded", TCL_GLOBAL_ONLY)
	    != NULL) {
	pthread_mutex_lock(&queueLock);
	threadedTcl = 1;
	pthread_mutex_unlock(&queueLock);
    }
    pthread_once(&setupOnce, SetupProcess);
    if (adoptError != 0) {
	errno = adoptError;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't adopt the queues handed over by the spawning "
		"process: %s", Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    /*
     * The hand-over's variable is gone from the process's environment;
     * keep this interpreter's env array in step.
     */

    Tcl_UnsetVar2(interp, "env", SPAWN_ENV, TCL_GLOBAL_ONLY);

    dataPtr = (InterpData *) ckalloc(sizeof(InterpData));
    dataPtr->interp = interp;
    dataPtr->firstReceiverPtr = NULL;
    Tcl_SetAssocData(interp, ASSOC_KEY, DeleteInterpData, dataPtr);
    Tcl_CreateObjCommand(interp, "::socketserver::socket",
	    SocketserverObjCmd, dataPtr, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::signal",
	    SignalObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::kill",
	    KillObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::exited",
	    ExitedObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::descriptors",
	    DescriptorsObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::notify",
	    NotifyObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::runas",
	    RunasObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::socketserver::wait",
	    WaitObjCmd, NULL, NULL);

    /*
     * Which build this is: what the scripts may rely on differs (see the
     * manual page).
     */

    if (Tcl_SetVar2(interp, "::socketserver::build", NULL, BUILD_NAME,
	    TCL_GLOBAL_ONLY | TCL_LEAVE_ERR_MSG) == NULL) {
	return TCL_ERROR;
    }
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
    if (Tcl_InitStubs(interp, "8.6-", 0) == NULL) {
	return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewStringObj(
	    "socketserver can't be loaded into a safe interpreter: it opens "
	    "listening sockets and shares them with forked processes", -1));
    Tcl_SetErrorCode(interp, "SOCKETSERVER", "SAFE", NULL);
    return TCL_ERROR;
}
