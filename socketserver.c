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
 *	A worker is a process forked from the serving process, or a program
 *	it started with 'spawn', which adopts the queues when it loads the
 *	package.
 *
 *	Contents, in the order of a connection's life (each section opens
 *	with a banner of '=' lines; the prototypes below are grouped the
 *	same way):
 *
 *	Set-up                  Socketserver_Init, the ensemble
 *	                        (SocketserverObjCmd), per-interpreter data,
 *	                        the process's set-up, fork and exit
 *	                        handlers. Start reading here.
 *	The accept thread       StartAccepting, AcceptConnections: waits
 *	                        (WaitIdle), accepts (AcceptOneConnection),
 *	                        stops (StopAccepting).
 *	Watched connections     Connections held until readable ('server
 *	                        -ready') or between requests ('release'):
 *	                        the watch table.
 *	The queue and hand-over ReadQueue (asks, withdrawals, connections
 *	                        sent up), reply sockets, pending
 *	                        connections, the ready queue, and
 *	                        HandOverFirstPending: the oldest pending
 *	                        connection to the oldest ask.
 *	The worker's receive    ClientCmd (SendAsk, or a ready connection),
 *	and delivery            ReceiveConnection or DeliverTaken,
 *	                        FinishRequest, DeliverConnection (the
 *	                        handler); cancel, refusal, withdrawal; a
 *	                        receiver's life (NewReceiver ...
 *	                        DropReceiver).
 *	Release                 ReleaseCmd: linger, keep (the keeper
 *	                        thread), or send the connection up.
 *	The scoreboard          Slots in shared memory, the trailer, and
 *	                        BoardObj, which reads them for 'info'.
 *	Server, close and info  ServerCmd, the listener, a port's state
 *	                        (PortState, AddQueue), CloseCmd, InfoCmd.
 *	Upgrade and adoption    ReexecCmd, SpawnCmd, and AdoptQueues in the
 *	                        program that was handed the queues.
 *	Process tools           signal, kill, exited, wait, descriptors,
 *	                        notify, runas: no port state; the few names
 *	                        they share are listed at their banner.
 *
 *	Return conventions, one per kind of function:
 *	    - Commands, and helpers that take an interpreter: a standard Tcl
 *	      result; TCL_ERROR leaves a message and -errorcode (POSIX ...
 *	      or SOCKETSERVER ...) in the interpreter.
 *	    - Predicates and attempts (Is..., Drained, FreeSlot, AddPending,
 *	      ...): 1 for yes or done, 0 for no or not done.
 *	    - Lookups: the pointer or NULL (FindQueue, FindReceiver), the
 *	      index or -1 (FindReplySocket).
 *	    - Senders that wrap one system call (SendUp, SendReady,
 *	      MakeQueueSockets, and ancillary.h): as the call, 0 or -1 with
 *	      errno set. Functions that make or arm something from several
 *	      calls (MakeAcceptPoll, WatchReplySocket, DetachConnection,
 *	      WatchParent): 0, or the errno value of the call that failed,
 *	      with nothing left half made.
 *	    - Tcl event procedures: 1 once handled, 0 to stay queued.
 *	      Thread bodies: NULL.
 *	Each function's block says where it differs (SendAsk, TakeReady and
 *	SendReleased have a third outcome).
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
 * for a slot) that finds its process gone: no process of its pid, or one
 * that started at another time (the pid was reused). Whoever frees a slot
 * it does not own first swaps asker for its own pid (below 2^32, never an
 * id), clears state and started, then stores 0: a claimant sees a free
 * slot only once it is clear. Any process of the queue can write every
 * slot, so every field is checked when read.
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
    uint32_t started;		/* When its process started (StartMark), 0
				 * if unknown: with the pid, names the
				 * process across pid reuse. */
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
    uint32_t closed;		/* 1 from 'close' (or a 'server' whose
				 * accept thread did not start) until
				 * 'server' listens again: 'release' then
				 * closes its connection, for no accept
				 * thread may be left to read it. Written by
				 * the serving process, atomic. */
    uint32_t releasing;		/* Workers between their look at closed
				 * and the end of their send of a released
				 * connection (SendReleased): 'close' waits
				 * for none to be left before its last read
				 * of the queue. Atomic. */
    uint32_t receivers;		/* Receivers made so far: the low half of
				 * the next receiver's id, so that ids stay
				 * unique when a pid is reused. Atomic. */
    uint32_t markSeq;		/* Odd while 'server' writes markLength and
				 * mark (a seqlock, as Slot's seq). */
    uint32_t replaced;		/* 1 from the start of 'reexec' (0 again if
				 * the exec fails): the serving process's
				 * program is being replaced, and the queue's
				 * reading end crosses to the new one.
				 * 'release' then waits for no next request
				 * (Linger) but sends the connection up at
				 * once, for the new program. Written by the
				 * serving process, atomic. */
    uint32_t markLength;	/* -readyafter: a connection is ready (its
				 * request whole) once the bytes it has sent
				 * contain mark; 0: once it has sent one.
				 * Written by 'server' before it clears
				 * closed; read by workers ('release'). */
    char mark[MARK_MAX];	/* The string, markLength bytes. */
    int32_t readyCount;		/* Connections in the ready queue, as a
				 * hint that spares a read of it when it is
				 * empty: the serving process adds 1 before
				 * each send into it (and takes it back if
				 * the send fails), a taker subtracts 1
				 * after each message it took (TakeReady).
				 * So it is never below what the queue
				 * holds; above only for a taker killed
				 * between its take and its subtraction:
				 * then readers read as before. Atomic. */
    int32_t queuedCount;	/* Messages on the ask queue, likewise: each
				 * sender adds 1 before its send (SendUp),
				 * the accept thread subtracts 1 per message
				 * it reads (ReadQueue). Atomic. */
} BoardTrailer;

#define SEQ_TRIES	1000	/* Reads of a slot, or of the mark, before a
				 * reader gives up on a writer that does not
				 * finish (killed while it wrote). */
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

#define OLD_QUEUES	8	/* Most queues of replaced programs a queue
				 * reads (oldAskFds): one per upgrade in
				 * place whose old workers are still there. */
#define FIXED_FDS	(3 + OLD_QUEUES)
				/* Without epoll: what the accept thread
				 * polls before the reply sockets (WaitIdle):
				 * stop pipe, listener, queue, old queues. */

/*
 * A port's state: one per port, process-wide, never freed: workers forked
 * earlier keep using it across 'close' and a later 'server' on the same
 * port. One embedded struct per concern: the accept thread, the asks and
 * reply sockets (the queue proper), the pending connections and the ready
 * queue, the watch table, and the counts.
 *
 * queueLock guards the list and every field marked (L). Every descriptor
 * the accept thread creates or receives (accept(), recvmsg() of asks) is
 * created and recorded here under the lock, so that a fork, whose prepare
 * handler takes the lock, never copies one that the child handler does
 * not know about and close. The accept thread reads accept.listenFd,
 * asks.askFds[0] and accept.wakeFds without the lock: they are set before
 * it starts and changed only after it is joined.
 */

typedef struct PortState {
    struct PortState *nextPtr;	/* Next port of the process. (L) */
    int port;			/* Port number; fixed. */
    int boardFd;		/* The scoreboard's memfd, kept to hand to
				 * spawned programs; fixed. */
    Slot *board;		/* The scoreboard, BOARD_SLOTS slots, mapped
				 * shared; fixed. Lock-free: see Slot. */

    struct {			/* The accept thread. */
	int state;		/* NOT_LISTENING, LISTENING, DRAINING or
				 * STOPPING. (L) */
	pthread_t thread;	/* The thread, when state isn't
				 * NOT_LISTENING. */
	int listenFd;		/* Listening socket or -1. (L) */
	int pollFd;		/* Linux: its epoll instance (WaitIdle),
				 * while it runs; else -1. (L) */
	int wakeFds[2];		/* Pipe whose read end, when readable, tells
				 * it to stop. (L) */
	char myaddr[NI_MAXHOST];/* Numeric address last listened on. (L) */
	int lastErrno;		/* Last error it met, or 0. (L) */
    } accept;

    struct {			/* The queue: asks and reply sockets. */
	int askFds[2];		/* [0] is read by the accept thread (-1 in
				 * forked children); every process writes
				 * asks to [1]. (L) */
	int oldAskFds[OLD_QUEUES];
				/* Reading ends of the queues of the
				 * programs this one replaced ('reexec'), or
				 * -1: their workers, still finishing, send
				 * released and returned connections up
				 * them. Read with askFds[0], for those
				 * only, until their last worker is gone
				 * (end of file) or 'close'. (L) */
	uint64_t *askers;	/* The asks read so far and not answered or
				 * withdrawn: their askers' ids, oldest
				 * first, malloc'd. (L) */
	int numAsks;		/* How many. (L) */
	int askSpace;		/* How many fit without realloc(). (L) */
	ReplySocket *replySockets;
				/* Every receiver that has asked, by the
				 * first ask's order, malloc'd. (L) */
	int numReplySockets;	/* How many. (L) */
	int replySpace;		/* How many fit without realloc(). (L) */
	int pruneMark;		/* Look for hung-up reply sockets when
				 * numReplySockets passes this. (L) */
    } asks;

    struct {			/* Connections not handed over yet. */
	Pending *list;		/* To hand over, in accept order (by
				 * sequence): the accept thread hands over
				 * the first. Accepted ones, returned ones
				 * and, when one is returned, those it takes
				 * back from the ready queue to put it in
				 * front of them. malloc'd. (L) */
	int numPending;		/* How many. (L) */
	int pendingSpace;	/* How many fit without realloc(). (L) */
	uint64_t nextSequence;	/* Sequence of the next accepted
				 * connection. (L) */
	int readyFds[2];	/* The ready queue: connections accepted
				 * while no ask was waiting: [1], in the
				 * serving process only, is written by the
				 * accept thread; a process calling 'client'
				 * takes one from [0] at once if there is
				 * one. Its send buffer holds only a few.
				 * (L) */
	int readyMayHold;	/* 0 once the accept thread found readyFds[0]
				 * empty and has not written since. (L) */
    } pending;

    struct {			/* The watch table: watched connections. */
	uint64_t timeoutNs[WATCH_KINDS];
				/* How long a connection of each kind is
				 * watched, ns: 'server -ready' (0: hand
				 * every connection over at once) and
				 * -keepalive. (L) */
	char mark[MARK_MAX];	/* 'server -readyafter': the accept thread's
				 * own copy of the trailer's mark, which
				 * workers can write. (L) */
	size_t markLength;	/* Its length, at most MARK_MAX. (L) */
	Watched *entries;	/* Entries, used and free, malloc'd. (L) */
	int watchSpace;		/* How many entries. (L) */
	int freeWatched;	/* First free entry, or -1. (L) */
	int firstWatched[WATCH_KINDS];
				/* Each kind's list: oldest entry, */
	int lastWatched[WATCH_KINDS];
				/* newest entry (-1: empty), */
	int numWatched[WATCH_KINDS];
				/* and length. (L) */
	int watchLimit;		/* Most connections watched at once: half
				 * the descriptor limit at 'server', at most
				 * WATCH_MAX. (L) */
	int watchPollFd;	/* Linux: the epoll instance that holds the
				 * watched connections, itself held by
				 * accept.pollFd; else -1. (L) */
    } watch;

    struct {			/* What 'info' reports. */
	long accepted;		/* Connections this process accepted. (L) */
	long received;		/* Connections this process took. (L) */
	long closed;		/* Connections this process closed without
				 * handing them over: silent to the end of
				 * -ready or -keepalive, gone while parked,
				 * closed for room, or by 'close'. (L) */
	int passed;		/* Connections the last 'server -fd' took
				 * over from a 'reexec' (AdoptPassed). (L) */
	int ignored;		/* Entries of LISTENER_ENV it did not take:
				 * malformed, repeated, or no connection that
				 * crossed the exec. (L) */
    } counts;
} PortState;

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
    PortState *queuePtr;		/* The queue it receives from. */
    uint64_t id;		/* Names it in its asks: process id and the
				 * board's count of receivers, unique even
				 * across a reuse of the pid. */
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
    struct ReceiverEvent *readyEventPtr;
				/* With a watcher thread: the ReplyReadable
				 * event it queues when the reply socket is
				 * next readable, allocated by the
				 * interpreter's thread before each arming
				 * (so that the watcher, which Tcl never
				 * finalizes, never allocates), or NULL once
				 * queued. (L) */
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
    Message keptMessage;	/* Its message. (L) */
    uint64_t keptUntil;		/* With keptFd: CLOCK_MONOTONIC, ns, when
				 * the keeper sends it up (ExpireKept);
				 * UINT64_MAX while 'release' makes it
				 * ready. (L) */
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
 * A connection delivered to a handler, while its channel is open: what
 * 'release' needs to give it back. A close handler on the channel
 * (ForgetDelivered) frees it. The list is the process's, not a thread's:
 * a channel may be moved to another thread (thread::transfer,
 * Tcl_CutChannel and Tcl_SpliceChannel), then closed or released there.
 * Only the thread that has the channel touches its entry.
 */

typedef struct Delivered {
    struct Delivered *nextPtr;	/* Next of the process. (L) */
    Tcl_Channel chan;		/* Its channel. */
    PortState *queuePtr;		/* The queue it came from. */
    Message message;		/* Its message: the peer's address. */
} Delivered;

/*
 * Per interpreter: its receivers. Touched only in the thread of the
 * interpreter.
 */

typedef struct InterpData {
    Tcl_Interp *interp;		/* The interpreter. */
    Receiver *firstReceiverPtr;	/* Its receivers, one per queue it has
				 * asked from. */
} InterpData;

/*
 * What 'spawn' needs of Tcl's internal platform stubs (Unix and macOS, Tcl
 * 8.6 and 9): the head of the table, up to TclpCreateCommandChannel, which
 * makes Tcl's own command channel for a process already started. A TclFile
 * is a descriptor's number + 1. See CommandChannelMaker.
 */

typedef Tcl_Channel (CommandChannelProc)(void *readFile, void *writeFile,
	void *errorFile, int numPids, Tcl_Pid *pidPtr);

struct TclIntPlatStubs {
    int magic;			/* TCL_STUB_MAGIC. */
    void *hooks;		/* Unused. */
    void (*getAndDetachPids)(Tcl_Interp *interp, Tcl_Channel chan);
				/* Slot 0: unused. */
    int (*closeFile)(void *file);
				/* Slot 1: unused. */
    CommandChannelProc *createCommandChannel;
				/* Slot 2: TclpCreateCommandChannel. */
};

extern char **environ;		/* What 'spawn' gives its program. */

static pthread_mutex_t queueLock = PTHREAD_MUTEX_INITIALIZER;
static PortState *firstQueuePtr = NULL;	/* Queues of this process. (L) */
static Receiver *allReceivers = NULL;	/* Receivers of every interpreter
					 * of the process. (L) */
static int defaultPort = -1;		/* Port of the first server. (L) */
static Delivered *firstDelivered = NULL;/* Delivered connections whose
					 * channels are open, in any thread.
					 * (L) */
static int processExiting = 0;		/* 1 once the exit handler has run
					 * (FinalizeServers): the thread exit
					 * handlers that follow leave the
					 * receivers and the signal scripts
					 * as they are. (L) */
static int releaseDummyFd = -1;		/* One end of a socketpair, made at the
					 * first 'release', that takes the place
					 * of a released connection's descriptor
					 * in its channel (DetachConnection).
					 * (L) */
static int reserveFd = -1;		/* /dev/null, opened with the first
					 * receiver or wake pipe: the
					 * descriptor closed to make room when
					 * a process out of descriptors must
					 * send connections back up the queue
					 * (ReturnReceived), and the one a
					 * forked child puts in place of its
					 * copies of the parent's reply sockets
					 * and wake pipes, with no descriptor
					 * to spare too (AtForkChild). (L) */
static unsigned long forkGeneration = 0;/* Counts forks; changed only in
					 * the child of a fork. */
static pthread_once_t setupOnce = PTHREAD_ONCE_INIT;

/*
 * The keeper: a thread of the process, started by the first 'release'
 * that keeps a connection (Linger), that sends a kept connection up the
 * queue after all (SendKept) when its interpreter has not asked for it
 * within KEEP_NS: a handler that works on after 'release' (logging, a
 * commit) would otherwise hold a request that another worker could serve
 * at once. It sleeps until the first kept connection's deadline; with
 * none kept, it sleeps KEEP_NS more if one was kept meanwhile, and
 * otherwise waits on keeperCond until a keep signals it. So under load a
 * keep costs no system call and the keeper wakes at most once per
 * KEEP_NS; an idle worker's keeper does not wake at all.
 */

#define KEEPER_NONE	0	/* No keeper thread in this process. */
#define KEEPER_AWAKE	1	/* It runs, or sleeps until a deadline. */
#define KEEPER_IDLE	2	/* It waits on keeperCond: nothing kept. */
#define KEEPER_STOP	3	/* Told to end (the exit handler). */
#define KEEPER_FAILED	4	/* keeperCond could not be made: none. */

static int keeperState = KEEPER_NONE;	/* KEEPER_*. (L) */
static pthread_t keeper;		/* The thread, unless KEEPER_NONE. */
static pthread_cond_t keeperCond;	/* Wakes it: a keep while it is
					 * idle, or the exit handler. Its
					 * clock is CLOCK_MONOTONIC. (L) */
static uint64_t keepCount = 0;		/* Connections kept so far. (L) */

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
    Tcl_ThreadId thread;	/* The thread that watches fds[0]; the pipe
				 * is freed when it ends
				 * (ForgetThreadSignals), since glibc gives
				 * its id to the next thread made. */
    int fds[2];			/* Pipe, both ends non-blocking and
				 * close-on-exec. (S) */
    unsigned long generation;	/* forkGeneration when made: in a forked
				 * child, fds[0] is /dev/null (or, with no
				 * /dev/null to put there, still the
				 * parent's: a copy of a reading end takes
				 * nothing from it) and fds[1] closed. (S) */
} WakePipe;

static pthread_mutex_t signalLock = PTHREAD_MUTEX_INITIALIZER;
static SignalHandler *signalHandlers[NSIG];
					/* Script per signal number. (S) */
static WakePipe *firstWakePipe = NULL;	/* One per live thread that set a
					 * script, and those of a forked
					 * child's parent, until met. (S) */
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
static int atforkError = 0;		/* Why pthread_atfork() refused the
					 * fork handlers, or 0; set once by
					 * SetupProcess. */
static int closeShutsDown = 1;		/* 1 where closing a socket channel
					 * shuts its reading side down first
					 * (every Tcl but 8.6): see
					 * DetachConnection; set once by
					 * SetupProcess. */
static int threadedTcl = 0;		/* 1 if Tcl is built with threads;
					 * set by Socketserver_Init. (L) */

/*
 * What this process's Tcl notifier can do, set once by SetupProcess before
 * any thread of ours starts, read without a lock after.
 */

static struct {
    int forkBreaks;		/* 1 where Tcl's event loop does not survive
				 * fork() (Tcl 9 on Linux). */
    int usesSelect;		/* 1 where Tcl's notifier watches file
				 * handlers with select() (Tcl 8), so not a
				 * descriptor from FD_SETSIZE up. */
    int watchInThread;		/* 1 where reply sockets are watched by
				 * watcher threads (Tcl 8 with threads, on
				 * Linux), 0 where by file handlers. See
				 * WatchReplySocket. */
} notifier = {0, 0, 0};

#define ASSOC_KEY	"socketserver"
#define LISTENER_ENV	"SOCKETSERVER_LISTENER"
				/* "PORT FD list=LIST": 'reexec' kept port's
				 * listener open as FD, and the connections
				 * not handed over yet, whose numbers are in
				 * the file open as LIST: PASSED_MAGIC, then
				 * each connection, pending as "N", watched
				 * as "sN" (silent) and "pN" (parked).
				 * Before version 2, the connections followed
				 * FD in the variable itself. */
#define PASSED_MAGIC	"socketserver-passed"
				/* LIST's first line: this, then the version,
				 * PORT, FD and how many connections, each
				 * after a space. */
#define PASSED_VERSION	2	/* The list's version; 1 was the list in
				 * the variable. */
#define PASSED_MAX	(16 << 20)
				/* Longest list read, in bytes: room for far
				 * more than WATCH_MAX connections and the
				 * pending ones. */
#define SPAWN_ENV	"SOCKETSERVER_SPAWN"
				/* "PID NONCE": a hand-over from process PID
				 * waits on standard input. */
#define PAUSE_MS	100	/* Pause after a resource shortage. */
#define RETRY_MS	10	/* Retry after the kernel refused a send for
				 * want of resources. */
#define WATCH_REPLY	0	/* Watcher's epoll tags: the reply socket, */
#define WATCH_STOP	1	/* and the eventfd that stops it. Every
				 * epoll registration of this file is tagged
				 * by what it is, never by its descriptor,
				 * whose number may be any (a worker that
				 * closed its standard channels gets a reply
				 * socket at 1). */
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
#define KEEP_NS		5000000u/* How long a connection kept by 'release'
				 * waits for its interpreter's next 'client'
				 * before the keeper sends it up. */
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
 * What 'server' was asked for (ParseServerOptions).
 */

typedef struct ServerOptions {
    const char *mark;		/* -readyafter, markLength bytes ("" if
				 * none). */
    Tcl_Size markLength;
    uint64_t timeoutNs[WATCH_KINDS];
				/* -ready and -keepalive, ns. */
    const char *myaddr;		/* -myaddr. */
    int backlog;		/* -backlog. */
    int adoptFd;		/* -fd, or -1. */
    int port;			/* The port, 0 if none was given (or 0). */
} ServerOptions;

static const ServerOptions serverDefaults = {
    "", 0, {0, DEFAULT_KEEPALIVE_NS}, "0.0.0.0", SOMAXCONN, -1, 0
};

/*
 * Static routines for this file:
 */

/* Set-up */

static int		SocketserverObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static void		DeleteInterpData(ClientData clientData,
			    Tcl_Interp *interp);
static void		EndInterpThread(ClientData clientData);
static void		CloseFd(int *fdPtr);
static int		ReplaceInChild(int fd, int nullFd);
static void		SetupProcess(void);
static void		AtForkPrepare(void);
static void		AtForkParent(void);
static void		AtForkChild(void);
static void		FinalizeServers(ClientData clientData);
static PortState *		FindQueue(int port);

/* The accept thread */

static int		StartAccepting(Tcl_Interp *interp, PortState *queuePtr,
			    int listenFd);
static int		MakeAcceptPoll(PortState *queuePtr);
static void *		AcceptConnections(void *clientData);
static int		WaitIdle(PortState *queuePtr, int *listenReadyPtr,
			    int *askReadyPtr);
static int		WaitFor(PortState *queuePtr, int fd, short events,
			    int otherFd, short otherEvents, int timeoutMs);
static int		AcceptOneConnection(PortState *queuePtr);
static ConnReadiness	Readiness(int fd, const char *mark,
			    size_t markLength);
static int		MakePending(PortState *queuePtr, int fd,
			    Message *messagePtr);
static int		ToldToStop(PortState *queuePtr);
static int		Drained(PortState *queuePtr);
static void		FinishDraining(PortState *queuePtr);
static void		StopAccepting(PortState *queuePtr, int *listenFdPtr);

/* Watched connections */

static void		WatchConnection(PortState *queuePtr, int fd,
			    Message *messagePtr, WatchKind kind);
static int		ForgetWatched(PortState *queuePtr, int index,
			    int closing);
static int		AboveSelect(int fd);
static int		CloseOldestWatched(PortState *queuePtr);
static void		CloseAllWatched(PortState *queuePtr, int counting);
static int		WatchWaitMs(PortState *queuePtr);
static void		ServeWatched(PortState *queuePtr, int readable);
static void		TakeWatched(PortState *queuePtr, int index,
			    int hungUp);
static void		HandWatchedOver(PortState *queuePtr, int index);

/* The queue and hand-over */

static int		ReadQueue(PortState *queuePtr);
static void		ActOnQueueMessage(PortState *queuePtr, int fd,
			    Message *messagePtr);
static void		ForgetOldQueue(PortState *queuePtr, int index);
static int		AddReplySocket(PortState *queuePtr, uint64_t asker,
			    int fd);
static int		FindReplySocket(PortState *queuePtr, uint64_t asker);
static void		ForgetReplySocket(PortState *queuePtr, int index);
static void		WatchHangUp(PortState *queuePtr,
			    const ReplySocket *socketPtr, int watch);
static void		PruneReplySockets(PortState *queuePtr);
static int		GrowList(void **listPtr, int *spacePtr, int count,
			    size_t size);
static int		AddPending(PortState *queuePtr, int fd,
			    const Message *messagePtr);
static void		RemoveFirstPending(PortState *queuePtr);
static int		SendCounted(int sock, int32_t *countPtr, int fd,
			    Message *messagePtr);
static int		SendUp(PortState *queuePtr, int fd,
			    Message *messagePtr);
static int		SendReady(PortState *queuePtr, int fd,
			    Message *messagePtr);
static void		DrainReady(PortState *queuePtr);
static int		PendingAfterDrain(PortState *queuePtr);
static int		TakeReady(PortState *queuePtr, int *fdPtr,
			    Message *messagePtr);
static int		HandOverFirstPending(PortState *queuePtr, int wait);
static int		SendToOldestAsk(PortState *queuePtr, int *errorPtr);

/* The worker's receive and delivery */

static int		ClientCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		AskForConnection(Tcl_Interp *interp,
			    Receiver *receiverPtr);
static int		SetAskError(Tcl_Interp *interp, PortState *queuePtr,
			    int error);
static int		LookupQueue(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[], int first,
			    PortState **queuePtrPtr);
static void		WaitForRoom(PortState *queuePtr);
static int		SendAsk(Receiver *receiverPtr);
static int		WatchReplySocket(Receiver *receiverPtr);
#ifdef SS_LINUX
static void *		WatchReplies(void *clientData);
#endif
static int		ReplyReadable(Tcl_Event *evPtr, int flags);
static void		RearmReplySocket(Receiver *receiverPtr);
#ifdef SS_LINUX
static void		PrepareReplyEvent(Receiver *receiverPtr);
#endif
static void		ReceiveConnection(ClientData clientData, int mask);
static void		RetryReceive(ClientData clientData);
static int		DeliverTaken(Tcl_Event *evPtr, int flags);
static int		IsEventOf(Tcl_Event *evPtr, ClientData clientData);
static void		DeleteEventsOf(Receiver *receiverPtr,
			    Tcl_EventProc *proc);
static int		IsConnection(ssize_t got, int fd,
			    const Message *messagePtr);
static void		FinishRequest(Receiver *receiverPtr, int fd,
			    const Message *messagePtr);
static void		DeliverConnection(Tcl_Interp *interp,
			    Tcl_Obj *handlerObj, PortState *queuePtr, int fd,
			    const Message *messagePtr);
static void		ForgetDelivered(ClientData clientData);
static void		RefuseRequest(Receiver *receiverPtr,
			    Tcl_Obj *messageObj, const char *code);
static int		WithdrawRequest(Receiver *receiverPtr);
static void		ReturnConnections(PortState *queuePtr, int fd,
			    const Message *messagePtr);
static int		CancelCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static Receiver *	NewReceiver(InterpData *dataPtr, PortState *queuePtr);
static Receiver *	FindReceiver(InterpData *dataPtr, PortState *queuePtr);
static int		DropIfStale(Receiver *receiverPtr);
static void		StopWatcher(Receiver *receiverPtr);
static void		CloseReplySocket(Receiver *receiverPtr);
static void		ReturnReceived(Receiver *receiverPtr);
static void		KeepReserve(void);
static void		DropReceiver(Receiver *receiverPtr);

/* Release */

static int		ReleaseCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);
static int		RefuseUnreleasable(Tcl_Interp *interp,
			    Tcl_Channel chan, const char *name,
			    Delivered **deliveredPtrPtr, int *fdPtr);
static int		KeepForNextRequest(Receiver *receiverPtr, int fd,
			    const Message *messagePtr);
static int		DetachConnection(int fd);
static int		SendReleased(PortState *queuePtr, int fd,
			    Message *messagePtr, int wait);
static void		WaitReleasing(PortState *queuePtr);
static int		Linger(PortState *queuePtr, int fd);
static int		ReadMark(const BoardTrailer *trailerPtr, char *mark,
			    size_t *lengthPtr);
static void		SendKept(Receiver *receiverPtr);
static void		SendKeptWhenIdle(ClientData clientData);
static void		KeepFor(Receiver *receiverPtr);
static void *		ExpireKept(void *clientData);
static void		StopKeeper(void);
static void		InitKeeperCond(void);

/* The scoreboard */

static Slot *		MakeBoard(int *fdPtr);
static Slot *		MapBoard(int fd);
static void		ClaimSlot(Receiver *receiverPtr);
static void		MarkSlot(Receiver *receiverPtr, SlotState state,
			    const Message *messagePtr);
static Slot *		HandingTo(PortState *queuePtr, ReplySocket *socketPtr);
static void		StampHanded(Slot *slotPtr);
static int		FreeSlot(Slot *slotPtr, uint64_t owner);
static pid_t		SlotPid(uint64_t asker);
static int		OwnerGone(pid_t pid, uint32_t started);
static uint32_t		StartMark(pid_t pid);
static Tcl_Obj *	BoardObj(PortState *queuePtr);

/* Server, close and info */

static int		ServerCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		ParseServerOptions(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[],
			    ServerOptions *optionsPtr);
static int		ParseSeconds(Tcl_Interp *interp, const char *option,
			    Tcl_Obj *valueObj, const char *code,
			    uint64_t *nsPtr);
static PortState *	MakePortStateLocked(Tcl_Interp *interp, int port,
			    int listenFd);
static void		PublishMarkAndReopen(PortState *queuePtr,
			    const char *mark, Tcl_Size markLength);
static int		IsAscii(const char *string, Tcl_Size length);
static int		GetIntInRange(Tcl_Obj *objPtr, Tcl_WideInt min,
			    Tcl_WideInt max, int *valuePtr);
static int		ParsePort(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int *portPtr);
static void		SetPortErrorCode(Tcl_Interp *interp,
			    const char *code, int port);
static int		OpenListener(Tcl_Interp *interp, const char *myaddr,
			    int port, int backlog, int *fdPtr,
			    int *boundPortPtr, char *boundAddr);
static int		OpenNewListener(Tcl_Interp *interp,
			    const char *myaddr, int port, int backlog,
			    int *fdPtr, int *boundPortPtr, char *boundAddr);
static int		AdoptPassed(PortState *queuePtr, int adoptFd);
static int		AdoptListener(Tcl_Interp *interp, int fd, int port,
			    int *fdPtr, int *boundPortPtr, char *boundAddr);
static int		MakeQueueSockets(int askFds[2], int readyFds[2]);
static PortState *		AddQueue(int port, const int askFds[2],
			    const int readyFds[2], int boardFd, Slot *board);
static int		ClaimRefused(Tcl_Interp *interp, PortState *queuePtr);
static int		ClaimListening(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    PortState **queuePtrPtr);
static int		CloseCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		InfoCmd(InterpData *dataPtr, Tcl_Interp *interp,
			    int objc, Tcl_Obj *const objv[]);

/* Upgrade and adoption */

static int		KeepAcrossExec(PortState *queuePtr, int keep);
static int		ReexecCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		SendHandOver(int sock, uint64_t nonce);
static int		StartSpawned(Tcl_Obj *const wordv[], int argc,
			    uint64_t nonce, int deathSignal, int in, int out,
			    pid_t *pidPtr, int *failedExecPtr);
static int		SpawnCmd(Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static uint64_t		MakeNonce(int salt);
static int		IsQueueSocket(int fd);
static void		AdoptQueues(void);
static int		IsAdoptionMessage(ssize_t got, int fd,
			    const Message *messagePtr, uint64_t nonce,
			    int askFd, int boardFd);
static int		AddAdoptedQueue(Message *messagePtr, int boardFd,
			    int askFd, int readyFd);
static int		HandedOverBy(long spawner, uint64_t nonce);
static int		WatchParent(long spawner, int deathSignal);
#ifndef SS_LINUX
static void *		WatchParentLife(void *clientData);
#endif

/* Process tools */

static int		AdoptEntries(PortState *queuePtr, const char *entries,
			    Tcl_HashTable *seenPtr);
static int		CrossedExecAsQueue(int fd);
static int		CrossedExec(int fd, struct sockaddr_storage *addrPtr,
			    socklen_t *lengthPtr);
static char *		ReadPassedList(int listFd, int port, int listenFd,
			    int *countPtr);
static int		ParseDecimal(const char **textPtr, int *valuePtr);
static int		WritePassedList(PortState *queuePtr, int listenFd);
static int		AboveStandard(int *fdPtr);
static void		CloseAdopted(int fd);
static int		StartProgram(char **argv, char **envp, int in,
			    int out, pid_t *pidPtr, int *failedExecPtr);
static CommandChannelProc * CommandChannelMaker(void);
static void		CatchSignal(int signo);
static WakePipe *	ThreadWakePipe(Tcl_Interp *interp);
static void		FreeWakePipe(WakePipe *pipePtr);
static void		ForgetThreadSignals(ClientData clientData);
static void		RunCaughtSignals(ClientData clientData, int mask);
static void		RemoveSignalScript(int signo);
static void		ForgetSignals(int nullFd);
static int		ParseSignal(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int catchable, int *signoPtr);
static int		SignalObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		KillObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		GetPid(Tcl_Interp *interp, Tcl_Obj *objPtr,
			    int *pidPtr);
static int		ExitedObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		WaitObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		DescriptorsObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		NotifyObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);
static int		RunasObjCmd(ClientData clientData,
			    Tcl_Interp *interp, int objc,
			    Tcl_Obj *const objv[]);

DLLEXPORT int		Socketserver_Init(Tcl_Interp *interp);
DLLEXPORT int		Socketserver_SafeInit(Tcl_Interp *interp);

/*
 *======================================================================
 *
 * Set-up --
 *
 *	The package's entry (Socketserver_Init), the
 *	::socketserver::socket ensemble and its interpreter data; the
 *	process's one-time set-up (SetupProcess), the fork handlers that
 *	keep every descriptor and lock right in a child, and the exit
 *	handler (FinalizeServers). Start reading here.
 *
 *======================================================================
 */

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
 *	The first call in a process installs fork and exit handlers; each
 *	call a thread exit handler for the interpreter (EndInterpThread).
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
    if (atforkError != 0) {
	errno = atforkError;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't install socketserver's fork handlers: %s",
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
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
    Tcl_CreateThreadExitHandler(EndInterpThread, dataPtr);
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

    Tcl_DeleteThreadExitHandler(EndInterpThread, dataPtr);
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
 * EndInterpThread --
 *
 *	Thread exit handler of the thread of an interpreter that was not
 *	deleted (thread::exit ends a thread so): drops its receivers as its
 *	deletion would, so that no watcher thread is left to queue events
 *	for a thread that is gone (or for the next one, which glibc gives
 *	the same id), and no connection is left in a reply socket that
 *	nobody reads. Its signal scripts go with the thread's wake pipe
 *	(ForgetThreadSignals).
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	See DropReceiver. Nothing changes when the whole process exits
 *	(processExiting): FinalizeServers has done what must be done.
 *
 *----------------------------------------------------------------------
 */

static void
EndInterpThread(
    ClientData clientData)
{
    InterpData *dataPtr = clientData;
    int exiting;

    pthread_mutex_lock(&queueLock);
    exiting = processExiting;
    pthread_mutex_unlock(&queueLock);
    if (exiting) {
	return;
    }
    while (dataPtr->firstReceiverPtr != NULL) {
	DropReceiver(dataPtr->firstReceiverPtr);
    }
}

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
 * ReplaceInChild --
 *
 *	In the child of a fork: puts nullFd (/dev/null) in place of this
 *	process's copy of fd, a descriptor of its parent's, at the same
 *	number, so that the number stays taken (a file handler may still
 *	watch it) while the copy no longer holds what it was a copy of. Only
 *	async-signal-safe calls.
 *
 * Results:
 *	1 if replaced; 0 if not (no nullFd, or dup3() failed): the copy is
 *	left as it is, still open, and the caller decides what becomes of
 *	it.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
ReplaceInChild(
    int fd,
    int nullFd)
{
    return (nullFd >= 0 && dup3(nullFd, fd, O_CLOEXEC) >= 0);
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
 *	None. If the fork handlers can't be installed, nothing else is done
 *	and atforkError says why, for Socketserver_Init to refuse: a fork
 *	would copy the accept threads' descriptors and locks unrecorded.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static void
SetupProcess(void)
{
    int major, minor;

    Tcl_GetVersion(&major, &minor, NULL, NULL);
    notifier.usesSelect = (major < 9);
    closeShutsDown = !(major == 8 && minor <= 6);
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) \
	|| defined(__OpenBSD__) || defined(__DragonFly__)
    /*
     * Tcl 9 waits with one epoll instance per thread and nothing makes a
     * new one in a forked child: parent and child would share it. (The
     * BSDs' Tcl 9 waits with a kqueue, which a forked child does not
     * inherit at all.) A fact about Tcl, so the portable build too.
     */

    notifier.forkBreaks = (major >= 9);
#endif
#ifdef SS_LINUX
    /*
     * Tcl 8's notifier waits in a thread of its own. See WatchReplySocket.
     */

    pthread_mutex_lock(&queueLock);
    notifier.watchInThread = (major < 9 && threadedTcl);
    pthread_mutex_unlock(&queueLock);
#endif
    pthread_mutex_lock(&queueLock);
    InitKeeperCond();
    pthread_mutex_unlock(&queueLock);
    atforkError = pthread_atfork(AtForkPrepare, AtForkParent, AtForkChild);
    if (atforkError != 0) {
	return;
    }
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
 *	the reading ends of the queues (and of those of replaced programs),
 *	the writing ends of the ready
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
 *	sockets. The /dev/null is the reserve descriptor, or one opened
 *	here; with neither (no descriptor to spare, no /dev/null), a copy
 *	that a file handler may watch is kept until the receiver is dropped,
 *	and any other is closed and forgotten (-1): a number is never kept
 *	for a descriptor closed here.
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
    PortState *queuePtr;
    Receiver *receiverPtr;
    int i, nullFd;

    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	CloseFd(&queuePtr->accept.listenFd);
	CloseFd(&queuePtr->accept.pollFd);
	CloseFd(&queuePtr->asks.askFds[0]);
	for (i = 0; i < OLD_QUEUES; i++) {
	    CloseFd(&queuePtr->asks.oldAskFds[i]);
	}
	CloseFd(&queuePtr->pending.readyFds[1]);
	CloseFd(&queuePtr->accept.wakeFds[0]);
	CloseFd(&queuePtr->accept.wakeFds[1]);
	for (i = 0; i < queuePtr->pending.numPending; i++) {
	    CloseFd(&queuePtr->pending.list[i].fd);
	}
	queuePtr->pending.numPending = 0;
	CloseAllWatched(queuePtr, 0);
	for (i = 0; i < queuePtr->asks.numReplySockets; i++) {
	    CloseFd(&queuePtr->asks.replySockets[i].fd);
	}
	queuePtr->asks.numReplySockets = 0;
	queuePtr->asks.numAsks = 0;
	queuePtr->accept.state = NOT_LISTENING;
	queuePtr->counts.accepted = 0;
	queuePtr->counts.received = 0;
	queuePtr->accept.lastErrno = 0;
    }

    nullFd = (reserveFd >= 0) ? reserveFd
	    : open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (receiverPtr = allReceivers; receiverPtr != NULL;
	    receiverPtr = receiverPtr->nextInProcess) {
	if (receiverPtr->replyFd >= 0
		&& !ReplaceInChild(receiverPtr->replyFd, nullFd)
		&& notifier.watchInThread) {
	    /* Only the watcher thread, gone here, watched it. */
	    CloseFd(&receiverPtr->replyFd);
	}
	CloseFd(&receiverPtr->pollFd);
	CloseFd(&receiverPtr->stopFd);
	receiverPtr->watching = 0;
	CloseFd(&receiverPtr->takenFd);
	CloseFd(&receiverPtr->keptFd);
	receiverPtr->slotPtr = NULL;	/* The parent's. */
    }
    ForgetSignals(nullFd);
    if (nullFd != reserveFd) {
	CloseFd(&nullFd);
    }

    /*
     * The keeper is not in the child, which makes its own if it keeps;
     * the parent's keeper may have been waiting on the condition.
     */

    keeperState = KEEPER_NONE;
    InitKeeperCond();
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
 *	requests go back up their queues. The receivers stay as they are
 *	(processExiting), their slots marked exited.
 *
 *----------------------------------------------------------------------
 */

static void
FinalizeServers(
    ClientData clientData)
{
    PortState *queuePtr;
    Receiver *receiverPtr;

    (void) clientData;
    pthread_mutex_lock(&queueLock);
    processExiting = 1;
    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	if (queuePtr->accept.state != NOT_LISTENING) {
	    queuePtr->accept.state = STOPPING;
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

    StopKeeper();
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

static PortState *
FindQueue(
    int port)
{
    PortState *queuePtr;

    for (queuePtr = firstQueuePtr; queuePtr != NULL;
	    queuePtr = queuePtr->nextPtr) {
	if (queuePtr->port == port) {
	    return queuePtr;
	}
    }
    return NULL;
}

/*
 *======================================================================
 *
 * The accept thread --
 *
 *	One per port that this process serves: it accepts connections,
 *	reads the port's ask queue, waits for either (WaitIdle), and ends
 *	when 'close' or the exit handler tells it to (StopAccepting). It
 *	never touches an interpreter.
 *
 *======================================================================
 */

/*
 *----------------------------------------------------------------------
 *
 * StartAccepting --
 *
 *	Hands listenFd to a new accept thread for queuePtr. The caller
 *	has set queuePtr->accept.state to LISTENING.
 *
 * Results:
 *	TCL_OK, or TCL_ERROR with a message in interp.
 *
 * Side effects:
 *	On error listenFd is closed, the state is back to NOT_LISTENING
 *	and the scoreboard says closed, as after 'close'.
 *
 *----------------------------------------------------------------------
 */

static int
StartAccepting(
    Tcl_Interp *interp,
    PortState *queuePtr,
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
    queuePtr->accept.listenFd = listenFd;
    queuePtr->accept.wakeFds[0] = wakeFds[0];
    queuePtr->accept.wakeFds[1] = wakeFds[1];
    error = MakeAcceptPoll(queuePtr);
    pthread_mutex_unlock(&queueLock);

    /*
     * The thread blocks every signal, so that signals (TclX 'signal trap')
     * reach the interpreters' threads.
     */

    if (error == 0) {
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	error = pthread_create(&queuePtr->accept.thread, NULL,
		AcceptConnections, queuePtr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (error == 0) {
	    return TCL_OK;
	}
    }

    pthread_mutex_lock(&queueLock);
    CloseFd(&queuePtr->accept.pollFd);
    CloseFd(&queuePtr->accept.wakeFds[0]);
    CloseFd(&queuePtr->accept.wakeFds[1]);
    queuePtr->accept.listenFd = -1;
    pthread_mutex_unlock(&queueLock);

  failed:
    close(listenFd);

    /*
     * Nothing listens: as after 'close', the port is marked closed for
     * the workers' 'release', and what they released before they saw it
     * (and any watched connection) is closed, for no accept thread would
     * read or watch it.
     */

    __atomic_store_n(&TRAILER(queuePtr->board)->closed, 1, __ATOMIC_SEQ_CST);
    WaitReleasing(queuePtr);
    pthread_mutex_lock(&queueLock);
    queuePtr->accept.state = NOT_LISTENING;
    ReadQueue(queuePtr);
    CloseAllWatched(queuePtr, 1);
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
 *	waits with (WaitIdle): the stop pipe, the listener, the queue (and
 *	those of replaced programs, which read as the queue) and the epoll
 *	instance of the watched connections (made here if need be) for
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
    PortState *queuePtr)
{
#ifdef SS_LINUX
    struct epoll_event event;
    int fds[4], i, error;

    if (queuePtr->watch.watchPollFd < 0) {
	queuePtr->watch.watchPollFd = epoll_create1(EPOLL_CLOEXEC);
	if (queuePtr->watch.watchPollFd < 0) {
	    return errno;
	}
    }
    queuePtr->accept.pollFd = epoll_create1(EPOLL_CLOEXEC);
    if (queuePtr->accept.pollFd < 0) {
	return errno;
    }
    fds[ACCEPT_STOP] = queuePtr->accept.wakeFds[0];
    fds[ACCEPT_LISTEN] = queuePtr->accept.listenFd;
    fds[ACCEPT_QUEUE] = queuePtr->asks.askFds[0];
    fds[ACCEPT_WATCH] = queuePtr->watch.watchPollFd;
    for (i = 0; i < 4; i++) {
	memset(&event, 0, sizeof(event));
	event.events = EPOLLIN;
	event.data.u64 = i;
	if (epoll_ctl(queuePtr->accept.pollFd, EPOLL_CTL_ADD, fds[i],
		&event) < 0) {
	    error = errno;
	    CloseFd(&queuePtr->accept.pollFd);
	    return error;
	}
    }
    for (i = 0; i < OLD_QUEUES; i++) {
	memset(&event, 0, sizeof(event));
	event.events = EPOLLIN;
	event.data.u64 = ACCEPT_QUEUE;
	if (queuePtr->asks.oldAskFds[i] >= 0
		&& epoll_ctl(queuePtr->accept.pollFd, EPOLL_CTL_ADD,
		    queuePtr->asks.oldAskFds[i], &event) < 0) {
	    error = errno;
	    CloseFd(&queuePtr->accept.pollFd);
	    return error;
	}
    }
    for (i = 0; i < queuePtr->asks.numReplySockets; i++) {
	WatchHangUp(queuePtr, &queuePtr->asks.replySockets[i], 1);
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
    PortState *queuePtr = clientData;

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

#ifdef SS_LINUX
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
    PortState *queuePtr,
    int *listenReadyPtr,
    int *askReadyPtr)
{
    struct epoll_event events[16];
    int i, n, index, timeoutMs, watchReady = 0;

    *listenReadyPtr = *askReadyPtr = 0;
    pthread_mutex_lock(&queueLock);
    timeoutMs = WatchWaitMs(queuePtr);
    pthread_mutex_unlock(&queueLock);
    n = epoll_wait(queuePtr->accept.pollFd, events, 16, timeoutMs);
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
}
#else

/*
 *----------------------------------------------------------------------
 *
 * WaitIdle --
 *
 *	The portable build's WaitIdle: the same with poll(), over the stop
 *	pipe, the listener, the queues and every reply socket (for hang-ups
 *	only). Without epoll, watched connections are polled every
 *	WATCH_POLL_MS (WatchWaitMs).
 *
 * Results:
 *	As WaitIdle above.
 *
 * Side effects:
 *	As WaitIdle above.
 *
 *----------------------------------------------------------------------
 */

static int
WaitIdle(
    PortState *queuePtr,
    int *listenReadyPtr,
    int *askReadyPtr)
{
    struct pollfd few[FIXED_FDS], *fds = few;
    uint64_t *askers = NULL;
    int i, n, m, index, kind, timeoutMs, stop;

    /*
     * The stop pipe, the listener, the queue and the queues of replaced
     * programs (a negative fd is ignored), then the reply sockets, for
     * hang-ups only (no events asked: POLLHUP and POLLERR always come), and
     * the watched connections, to be woken as one becomes readable, as the
     * epoll instance holds them on Linux; without the memory for that, not
     * this time: they are looked at every WATCH_POLL_MS instead.
     */

    *listenReadyPtr = *askReadyPtr = 0;
    pthread_mutex_lock(&queueLock);
    timeoutMs = WatchWaitMs(queuePtr);
    n = queuePtr->asks.numReplySockets;
    m = queuePtr->watch.numWatched[WATCH_SILENT]
	    + queuePtr->watch.numWatched[WATCH_PARKED];
    if (n + m > 0) {
	fds = malloc((FIXED_FDS + n + m) * sizeof(struct pollfd));
	askers = malloc((n + 1) * sizeof(uint64_t));	/* Never malloc(0). */
	if (fds == NULL || askers == NULL) {
	    free(fds);
	    free(askers);
	    fds = few;
	    askers = NULL;
	    n = m = 0;
	}
    }
    for (i = 0; i < OLD_QUEUES; i++) {
	fds[3 + i].fd = queuePtr->asks.oldAskFds[i];
    }
    for (i = 0; i < n; i++) {
	fds[FIXED_FDS + i].fd = queuePtr->asks.replySockets[i].fd;
	fds[FIXED_FDS + i].events = 0;
	fds[FIXED_FDS + i].revents = 0;
	askers[i] = queuePtr->asks.replySockets[i].asker;
    }
    m = 0;
    for (kind = 0; fds != few && kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->watch.firstWatched[kind]; index >= 0;
		index = queuePtr->watch.entries[index].next) {
	    if (!queuePtr->watch.entries[index].lookLater) {
		fds[FIXED_FDS + n + m].fd = queuePtr->watch.entries[index].fd;
		fds[FIXED_FDS + n + m].events = POLLIN;
		fds[FIXED_FDS + n + m].revents = 0;
		m++;
	    }
	}
    }
    pthread_mutex_unlock(&queueLock);
    if (fds == few && timeoutMs > WATCH_POLL_MS) {
	timeoutMs = WATCH_POLL_MS;
    }
    fds[0].fd = queuePtr->accept.wakeFds[0];
    fds[1].fd = queuePtr->accept.listenFd;
    fds[2].fd = queuePtr->asks.askFds[0];
    for (i = 0; i < FIXED_FDS; i++) {
	fds[i].events = POLLIN;
	fds[i].revents = 0;
    }
    if (poll(fds, FIXED_FDS + n + m, timeoutMs) < 0 && errno != EINTR) {
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
	if (fds[FIXED_FDS + i].revents & (POLLHUP | POLLERR)) {
	    /* Unless another thread forgot it meanwhile. */
	    index = FindReplySocket(queuePtr, askers[i]);
	    if (index >= 0 && queuePtr->asks.replySockets[index].fd
		    == fds[FIXED_FDS + i].fd) {
		ForgetReplySocket(queuePtr, index);
	    }
	}
    }
    pthread_mutex_unlock(&queueLock);
    *listenReadyPtr = (fds[1].revents != 0);
    for (i = 2; i < FIXED_FDS; i++) {
	if (fds[i].revents != 0) {
	    *askReadyPtr = 1;
	}
    }
    stop = (fds[0].revents != 0);
    if (fds != few) {
	free(fds);
    }
    free(askers);
    return (!stop || !ToldToStop(queuePtr));
}
#endif

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
    PortState *queuePtr,
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
    fds[3].fd = (watchMs >= 0) ? queuePtr->watch.watchPollFd : -1;
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
    fds[0].fd = queuePtr->accept.wakeFds[0];
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
    PortState *queuePtr)
{
    Message message;
    socklen_t addrLen = sizeof(message.addr);
    int fd, error = 0, pending = 0;

    memset(&message, 0, sizeof(message));
    pthread_mutex_lock(&queueLock);
    if (queuePtr->accept.listenFd < 0) {
	/* 'close' closed it (DRAINING) after the wait saw it readable. */
	pthread_mutex_unlock(&queueLock);
	return 0;
    }
    fd = accept4(queuePtr->accept.listenFd, (struct sockaddr *) &message.addr,
	    &addrLen, SOCK_CLOEXEC);
    if (fd >= 0) {
	/*
	 * Never at a standard number, which 'reexec' would pass on as the
	 * new program's stdin, stdout or stderr. (Failing that, with no
	 * number to spare, it is still served.)
	 */

	AboveStandard(&fd);
	message.magic = MESSAGE_MAGIC;
	message.addrLen = addrLen;
	queuePtr->counts.accepted++;

	/*
	 * With -ready, one look: a connection that has sent nothing yet is
	 * watched rather than handed over.
	 */

	ConnReadiness readiness = (queuePtr->watch.timeoutNs[WATCH_SILENT] > 0)
		? Readiness(fd, queuePtr->watch.mark,
		    queuePtr->watch.markLength)
		: CONN_HAS_DATA;

	if (readiness == CONN_SILENT || readiness == CONN_PARTIAL) {
	    WatchConnection(queuePtr, fd, &message, WATCH_SILENT);
	    pending = 0;
	} else {
	    pending = MakePending(queuePtr, fd, &message);
	}
    } else {
	error = errno;
	if (error != EAGAIN && error != EWOULDBLOCK && error != EINTR) {
	    queuePtr->accept.lastErrno = error;
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
 *	its reader. With a -readyafter mark (markLength bytes, at most
 *	MARK_MAX), bytes are a whole request once they contain it, or fill
 *	PEEK_MAX (then its reader must judge).
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
    const char *mark,
    size_t markLength)
{
    char bytes[PEEK_MAX];
    ssize_t got = recv(fd, bytes, (markLength == 0) ? 1 : sizeof(bytes),
	    MSG_PEEK | MSG_DONTWAIT);

    if (got > 0) {
	if (markLength == 0 || got == (ssize_t) sizeof(bytes)
		|| memmem(bytes, (size_t) got, mark, markLength) != NULL) {
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
    PortState *queuePtr,
    int fd,
    Message *messagePtr)
{
    messagePtr->kind = KIND_CONNECTION;
    messagePtr->sequence = queuePtr->pending.nextSequence++;
    if (!AddPending(queuePtr, fd, messagePtr)) {
	queuePtr->accept.lastErrno = ENOMEM;
	queuePtr->counts.closed++;
	close(fd);
	return 0;
    }
    return 1;
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
    PortState *queuePtr)
{
    char bytes[16];
    int stop;

    pthread_mutex_lock(&queueLock);
    stop = (queuePtr->accept.state != DRAINING);
    if (!stop) {
	/* Readable: read() returns at once. */
	if (read(queuePtr->accept.wakeFds[0], bytes, sizeof(bytes)) < 0) {
	    queuePtr->accept.lastErrno = errno;
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
    PortState *queuePtr)
{
    int i, drained;

    pthread_mutex_lock(&queueLock);
    drained = (queuePtr->accept.state == DRAINING);
    pthread_mutex_unlock(&queueLock);
    if (drained) {
	WaitReleasing(queuePtr);
    }
    pthread_mutex_lock(&queueLock);
    drained = (queuePtr->accept.state == DRAINING);
    if (drained) {
	/*
	 * A last look at the queue: a connection released meanwhile is
	 * closed (WatchConnection), one returned is pending after all.
	 */

	ReadQueue(queuePtr);
	drained = (queuePtr->pending.numPending == 0);
    }
    if (drained) {
	for (i = 0; i < OLD_QUEUES; i++) {
	    if (queuePtr->asks.oldAskFds[i] >= 0) {
		ForgetOldQueue(queuePtr, i);
	    }
	}
	CloseFd(&queuePtr->accept.pollFd);
	CloseFd(&queuePtr->accept.wakeFds[0]);
	CloseFd(&queuePtr->accept.wakeFds[1]);
	queuePtr->accept.state = NOT_LISTENING;
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
    PortState *queuePtr)
{
    if (queuePtr->accept.state == DRAINING) {
	queuePtr->accept.state = STOPPING;
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
    PortState *queuePtr,
    int *listenFdPtr)
{
    ssize_t written;

    do {
	written = write(queuePtr->accept.wakeFds[1], "x", 1);
    } while (written < 0 && errno == EINTR);
    /* A new pipe always takes these one or two bytes. */
    pthread_join(queuePtr->accept.thread, NULL);

    while (PendingAfterDrain(queuePtr)
	    && HandOverFirstPending(queuePtr, 0)) {
	/* Until no ask waits while a connection does. */
    }
    pthread_mutex_lock(&queueLock);
    if (listenFdPtr != NULL) {
	*listenFdPtr = queuePtr->accept.listenFd;
	queuePtr->accept.listenFd = -1;
    }
    CloseFd(&queuePtr->accept.listenFd);
    CloseFd(&queuePtr->accept.pollFd);
    CloseFd(&queuePtr->accept.wakeFds[0]);
    CloseFd(&queuePtr->accept.wakeFds[1]);
    queuePtr->accept.state = NOT_LISTENING;
    pthread_mutex_unlock(&queueLock);
}

/*
 *======================================================================
 *
 * Watched connections --
 *
 *	Connections the accept thread holds instead of handing them over
 *	because they have nothing to read yet ('server -ready') or came
 *	back between requests ('release'): the watch table, one list per
 *	kind in deadline order, and what happens when one becomes
 *	readable, hangs up or times out.
 *
 *======================================================================
 */

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
 *	once if -keepalive is 0. Under Tcl 8, one watched moves above
 *	FD_SETSIZE if it can (AboveSelect).
 *
 *----------------------------------------------------------------------
 */

static void
WatchConnection(
    PortState *queuePtr,
    int fd,
    Message *messagePtr,
    WatchKind kind)
{
    Watched *entryPtr;
    int index, error = 0;
    struct timespec now;

    if (queuePtr->watch.timeoutNs[kind] == 0
	    || queuePtr->accept.state == DRAINING
	    || queuePtr->accept.state == NOT_LISTENING) {
	/* No keep-alive; or the server is closed: nobody would serve it. */
	queuePtr->counts.closed++;
	close(fd);
	return;
    }
    fd = AboveSelect(fd);
    if (queuePtr->watch.numWatched[WATCH_SILENT]
	    + queuePtr->watch.numWatched[WATCH_PARKED]
	    >= queuePtr->watch.watchLimit) {
	CloseOldestWatched(queuePtr);
    }
    if (queuePtr->watch.freeWatched < 0) {
	int space = queuePtr->watch.watchSpace, i;

	if (GrowList((void **) &queuePtr->watch.entries,
		&queuePtr->watch.watchSpace, space, sizeof(Watched))) {
	    for (i = queuePtr->watch.watchSpace - 1; i >= space; i--) {
		queuePtr->watch.entries[i].fd = -1;
		queuePtr->watch.entries[i].tag = 0;
		queuePtr->watch.entries[i].next = queuePtr->watch.freeWatched;
		queuePtr->watch.freeWatched = i;
	    }
	} else {
	    error = ENOMEM;
	}
    }
    index = queuePtr->watch.freeWatched;
#ifdef SS_LINUX
    if (error == 0 && queuePtr->watch.watchPollFd < 0) {
	queuePtr->watch.watchPollFd = epoll_create1(EPOLL_CLOEXEC);
	if (queuePtr->watch.watchPollFd < 0) {
	    error = errno;
	}
    }
    if (error == 0) {
	struct epoll_event event;

	memset(&event, 0, sizeof(event));
	/* Edge-triggered: a part of a request leaves it watched. */
	event.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
	event.data.u64 = ((uint64_t) queuePtr->watch.entries[index].tag << 32)
		| (uint32_t) index;
	if (epoll_ctl(queuePtr->watch.watchPollFd, EPOLL_CTL_ADD, fd,
		&event) < 0) {
	    error = errno;
	}
    }
#endif
    if (error != 0) {
	queuePtr->accept.lastErrno = error;
	if (kind == WATCH_SILENT) {
	    MakePending(queuePtr, fd, messagePtr);
	} else {
	    queuePtr->counts.closed++;
	    close(fd);
	}
	return;
    }

    entryPtr = &queuePtr->watch.entries[index];
    queuePtr->watch.freeWatched = entryPtr->next;
    clock_gettime(CLOCK_MONOTONIC, &now);
    entryPtr->fd = fd;
    entryPtr->kind = kind;
    entryPtr->lookLater = 0;
    entryPtr->deadline = (uint64_t) now.tv_sec * 1000000000u + now.tv_nsec
	    + queuePtr->watch.timeoutNs[kind];
    entryPtr->message = *messagePtr;
    entryPtr->next = -1;
    entryPtr->prev = queuePtr->watch.lastWatched[kind];
    if (entryPtr->prev >= 0) {
	queuePtr->watch.entries[entryPtr->prev].next = index;
    } else {
	queuePtr->watch.firstWatched[kind] = index;
    }
    queuePtr->watch.lastWatched[kind] = index;
    queuePtr->watch.numWatched[kind]++;
}

/*
 *----------------------------------------------------------------------
 *
 * AboveSelect --
 *
 *	Under Tcl 8's select() notifier (notifier.usesSelect), moves
 *	connection fd, if it is from FD_SETSIZE/2 to FD_SETSIZE - 1, to a
 *	close-on-exec number from FD_SETSIZE up, if the descriptor limit has
 *	one. (Below FD_SETSIZE/2 it stays: a process that holds a few
 *	connections pays no system call for this, and the upper half of the
 *	numbers select() can watch is always left to Tcl.) The connections the
 *	serving process holds for long (watched, or passed by 'reexec') may
 *	be thousands, and took every number below 1024: what Tcl opened
 *	after them (a spawned worker's output, a signal's wake pipe, the
 *	notifier's own pipe in a program 'reexec' started) got one it
 *	cannot watch, and the process aborted in FD_SET. No Tcl channel is
 *	made of these, so their numbers are free to move.
 *
 * Results:
 *	The connection's number: new, or fd if it stays.
 *
 * Side effects:
 *	fd is closed if the connection moved.
 *
 *----------------------------------------------------------------------
 */

static int
AboveSelect(
    int fd)
{
    int high;

    if (!notifier.usesSelect || fd < FD_SETSIZE / 2 || fd >= FD_SETSIZE
	    || (high = fcntl(fd, F_DUPFD_CLOEXEC, FD_SETSIZE)) < 0) {
	return fd;
    }
    close(fd);
    return high;
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
    PortState *queuePtr,
    int index,
    int closing)
{
    Watched *entryPtr = &queuePtr->watch.entries[index];
    int fd = entryPtr->fd;

    if (entryPtr->prev >= 0) {
	queuePtr->watch.entries[entryPtr->prev].next = entryPtr->next;
    } else {
	queuePtr->watch.firstWatched[entryPtr->kind] = entryPtr->next;
    }
    if (entryPtr->next >= 0) {
	queuePtr->watch.entries[entryPtr->next].prev = entryPtr->prev;
    } else {
	queuePtr->watch.lastWatched[entryPtr->kind] = entryPtr->prev;
    }
    queuePtr->watch.numWatched[entryPtr->kind]--;
    entryPtr->fd = -1;
    entryPtr->tag++;
    entryPtr->next = queuePtr->watch.freeWatched;
    queuePtr->watch.freeWatched = index;
#ifdef SS_LINUX
    {
	struct epoll_event event;

	/*
	 * Closing this descriptor takes the connection out of epoll only if
	 * no other process or descriptor holds it: a stale registration
	 * would report it readable for ever.
	 */

	epoll_ctl(queuePtr->watch.watchPollFd, EPOLL_CTL_DEL, fd, &event);
    }
#endif
    if (closing) {
	queuePtr->counts.closed++;
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
    PortState *queuePtr)
{
    int index = queuePtr->watch.firstWatched[WATCH_PARKED];

    if (index < 0) {
	index = queuePtr->watch.firstWatched[WATCH_SILENT];
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
    PortState *queuePtr,
    int counting)
{
    int kind;

    if (!counting) {
	/*
	 * First: the epoll instance is the parent's too, and what this
	 * child took out of it would be gone from the parent's.
	 */

	CloseFd(&queuePtr->watch.watchPollFd);
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	while (queuePtr->watch.firstWatched[kind] >= 0) {
	    ForgetWatched(queuePtr, queuePtr->watch.firstWatched[kind], 1);
	}
    }
    if (!counting) {
	queuePtr->counts.closed = 0;
    }
    CloseFd(&queuePtr->watch.watchPollFd);
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
    PortState *queuePtr)
{
    uint64_t deadline = UINT64_MAX, nowNs;
    struct timespec now;
    int kind, index;

    for (kind = 0; kind < WATCH_KINDS; kind++) {
	index = queuePtr->watch.firstWatched[kind];
	if (index >= 0 && queuePtr->watch.entries[index].deadline < deadline) {
	    deadline = queuePtr->watch.entries[index].deadline;
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
	for (index = queuePtr->watch.firstWatched[kind]; index >= 0;
		index = queuePtr->watch.entries[index].next) {
	    if (queuePtr->watch.entries[index].lookLater) {
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
    PortState *queuePtr,
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
	int batches = (queuePtr->watch.numWatched[WATCH_SILENT]
		+ queuePtr->watch.numWatched[WATCH_PARKED]) / WATCH_BATCH + 1;

	do {
	    n = epoll_wait(queuePtr->watch.watchPollFd, events, WATCH_BATCH, 0);
	    for (i = 0; i < n; i++) {
		index = (int) (uint32_t) events[i].data.u64;
		if (index >= queuePtr->watch.watchSpace
			|| queuePtr->watch.entries[index].fd < 0
			|| queuePtr->watch.entries[index].tag
			    != (uint32_t) (events[i].data.u64 >> 32)) {
		    /* For a connection closed in this batch already. */
		    continue;
		}
		if (events[i].events == EPOLLIN
			&& TRAILER(queuePtr->board)->markLength == 0) {
		    /*
		     * Readable, and no hang-up (EPOLLRDHUP): it has bytes,
		     * all a connection without -readyafter needs, so no
		     * peek (TakeWatched).
		     */

		    HandWatchedOver(queuePtr, index);
		    continue;
		}
		TakeWatched(queuePtr, index, (events[i].events
			& (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
	    }
	} while (n == WATCH_BATCH && --batches > 0);
#else
	n = queuePtr->watch.numWatched[WATCH_SILENT]
		+ queuePtr->watch.numWatched[WATCH_PARKED];
	fds = malloc(n * sizeof(struct pollfd));
	if (fds != NULL) {
	    int *indexes = malloc(n * sizeof(int));

	    i = 0;
	    for (kind = 0; indexes != NULL && kind < WATCH_KINDS; kind++) {
		for (index = queuePtr->watch.firstWatched[kind]; index >= 0;
			index = queuePtr->watch.entries[index].next) {
		    fds[i].fd = queuePtr->watch.entries[index].fd;
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
	while ((index = queuePtr->watch.firstWatched[kind]) >= 0
		&& queuePtr->watch.entries[index].deadline <= nowNs) {
	    /*
	     * One last look: bytes that came with the deadline still count.
	     */

	    if (Readiness(queuePtr->watch.entries[index].fd,
		    queuePtr->watch.mark, queuePtr->watch.markLength)
		    == CONN_HAS_DATA) {
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
    PortState *queuePtr,
    int index,
    int hungUp)
{
    Watched *entryPtr = &queuePtr->watch.entries[index];

    switch (Readiness(entryPtr->fd, queuePtr->watch.mark,
	    queuePtr->watch.markLength)) {
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
    PortState *queuePtr,
    int index)
{
    Message message = queuePtr->watch.entries[index].message;
    int fd = ForgetWatched(queuePtr, index, 0);

    MakePending(queuePtr, fd, &message);
}

/*
 *======================================================================
 *
 * The queue and hand-over --
 *
 *	The accept thread's side of a port's queue: reading asks,
 *	withdrawals and connections sent up (ReadQueue), the reply
 *	sockets of the askers, the pending connections, the ready queue,
 *	and the hand-over of the oldest pending connection to the oldest
 *	ask (HandOverFirstPending).
 *
 *======================================================================
 */

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
 *	discarded. Then the queues of the programs this one replaced
 *	(oldAskFds), whose workers finish what they had: what they release
 *	or return is taken as released here; their asks and withdrawals are
 *	discarded, which closes the reply socket a first ask carries (its
 *	worker sees the serving process gone, as it is). At end of file,
 *	when the last of those workers is gone, such a queue is closed.
 *
 * Results:
 *	1 once the queues are empty; 0 if a message has to stay queued because
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
    PortState *queuePtr)
{
    Message message;
    ssize_t got;
    int fd, old = -1, sock = queuePtr->asks.askFds[0], taken = 0;
    int32_t *countPtr = &TRAILER(queuePtr->board)->queuedCount;

    for (;;) {
	if (old < 0 && taken > 0
		&& __atomic_load_n(countPtr, __ATOMIC_SEQ_CST) <= 0) {
	    /*
	     * The count is never below what the queue holds: it is empty,
	     * no read needs to find that. (The first read is always made:
	     * the caller was told the queue is readable, or must know.)
	     * The old queues' messages are counted on their own boards.
	     */

	    got = -1;
	    errno = EAGAIN;
	} else {
	    got = ancil_recv_fd(sock, &fd, &message, sizeof(message),
		    MSG_DONTWAIT);
	}
	if (got < 0 && errno == EMFILE) {
	    queuePtr->accept.lastErrno = EMFILE;
	    if (CloseOldestWatched(queuePtr)) {
		/* Room made for it: read it now. */
		continue;
	    }
	    return 0;
	}
	if (got == 0 && old >= 0) {
	    /* Nobody can write to it any more. */
	    ForgetOldQueue(queuePtr, old);
	}
	if ((got < 0 && errno != EBADMSG) || (got == 0 && old >= 0)) {
	    /* Empty: on to the next old queue, if any. */
	    do {
		old++;
	    } while (old < OLD_QUEUES && queuePtr->asks.oldAskFds[old] < 0);
	    if (old == OLD_QUEUES) {
		return 1;
	    }
	    sock = queuePtr->asks.oldAskFds[old];
	    continue;
	}
	if (old >= 0) {
	    if (got != sizeof(message) || message.magic != MESSAGE_MAGIC
		    || fd < 0 || (message.kind != KIND_RELEASE
			&& message.kind != KIND_RETURN)) {
		/* An ask or a withdrawal: the program it was for is gone. */
		CloseFd(&fd);
		continue;
	    }
	    message.kind = KIND_RELEASE;
	}
	if (old < 0) {
	    taken++;
	    __atomic_sub_fetch(countPtr, 1, __ATOMIC_SEQ_CST);
	}
	if (got <= 0 || (size_t) got != sizeof(message)
		|| message.magic != MESSAGE_MAGIC
		|| !((message.kind == KIND_ASK && message.asker > UINT32_MAX)
		    || (message.kind == KIND_WITHDRAW && fd < 0)
		    || (message.kind == KIND_RETURN && fd >= 0)
		    || (message.kind == KIND_RELEASE && fd >= 0))) {
	    /* Nobody here sends such a message: discard it. */
	    queuePtr->accept.lastErrno = EBADMSG;
	    CloseFd(&fd);
	    continue;
	}
	ActOnQueueMessage(queuePtr, fd, &message);
    }
}

/*
 *----------------------------------------------------------------------
 *
 * ActOnQueueMessage --
 *
 *	Accept thread, queueLock held: does what one well-formed message
 *	read from a queue (ReadQueue) asks. An ask joins the FIFO of asks
 *	(and the first of a receiver brings its reply socket); a withdrawal
 *	takes its asker's newest ask out again; a released connection is
 *	parked (watched) until its next request, or pending at once if that
 *	has come; a returned connection goes back into the pending list at
 *	its place in accept order, and the ready queue is drained into that
 *	list so that the returned one goes out before them.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	fd is recorded or closed. ENOMEM in lastErrno when there was no
 *	room to record it: a receiver whose ask can't be recorded is
 *	forgotten (it sees end of file, as if the serving process were
 *	gone, rather than wait for ever).
 *
 *----------------------------------------------------------------------
 */

static void
ActOnQueueMessage(
    PortState *queuePtr,
    int fd,
    Message *messagePtr)
{
    int index;

    switch (messagePtr->kind) {
    case KIND_ASK:
	index = (fd >= 0) ? AddReplySocket(queuePtr, messagePtr->asker, fd)
		: FindReplySocket(queuePtr, messagePtr->asker);
	if (index < 0) {
	    /*
	     * No room to record the socket (ENOMEM), or a later ask of a
	     * receiver already forgotten (its socket was hung up).
	     */

	    CloseFd(&fd);
	    return;
	}
	if (!GrowList((void **) &queuePtr->asks.askers,
		&queuePtr->asks.askSpace, queuePtr->asks.numAsks,
		sizeof(uint64_t))) {
	    queuePtr->accept.lastErrno = ENOMEM;
	    ForgetReplySocket(queuePtr, index);
	    return;
	}
	queuePtr->asks.askers[queuePtr->asks.numAsks++] = messagePtr->asker;
	break;
    case KIND_WITHDRAW:
	/*
	 * Its newest ask, if one is left: the others keep their places.
	 * None is left when the connection for it was sent already; it
	 * comes back up the queue as a KIND_RETURN.
	 */

	for (index = queuePtr->asks.numAsks - 1; index >= 0; index--) {
	    if (queuePtr->asks.askers[index] == messagePtr->asker) {
		queuePtr->asks.numAsks--;
		memmove(queuePtr->asks.askers + index,
			queuePtr->asks.askers + index + 1,
			(queuePtr->asks.numAsks - index) * sizeof(uint64_t));
		break;
	    }
	}
	break;
    case KIND_RELEASE:
	/*
	 * Its next request may be here already (pipelined): then it
	 * goes out at once. After 'close', nobody would hand it over.
	 */

	if (queuePtr->accept.state == NOT_LISTENING) {
	    queuePtr->counts.closed++;
	    close(fd);
	    break;
	}
	switch (Readiness(fd, queuePtr->watch.mark,
		queuePtr->watch.markLength)) {
	case CONN_HAS_DATA:
	    MakePending(queuePtr, fd, messagePtr);
	    break;
	case CONN_SILENT:
	case CONN_PARTIAL:
	    WatchConnection(queuePtr, fd, messagePtr, WATCH_PARKED);
	    break;
	case CONN_HUNG_UP:
	    queuePtr->counts.closed++;
	    close(fd);
	    break;
	}
	break;
    default:
	messagePtr->kind = KIND_CONNECTION;
	if (!AddPending(queuePtr, fd, messagePtr)) {
	    /* Its client sees end of file; nothing else can be done. */
	    queuePtr->accept.lastErrno = ENOMEM;
	    close(fd);
	    return;
	}
	DrainReady(queuePtr);
	break;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetOldQueue --
 *
 *	queueLock held: closes the reading end of the queue of a replaced
 *	program (oldAskFds[index]), at its end of file or at 'close'.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Its messages are gone; a worker that sends on it later is told the
 *	serving process is gone (EPIPE).
 *
 *----------------------------------------------------------------------
 */

static void
ForgetOldQueue(
    PortState *queuePtr,
    int index)
{
#ifdef SS_LINUX
    if (queuePtr->accept.pollFd >= 0) {
	epoll_ctl(queuePtr->accept.pollFd, EPOLL_CTL_DEL,
		queuePtr->asks.oldAskFds[index], NULL);
    }
#endif
    CloseFd(&queuePtr->asks.oldAskFds[index]);
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
    PortState *queuePtr,
    uint64_t asker,
    int fd)
{
    int index = FindReplySocket(queuePtr, asker);

    if (index >= 0) {
	WatchHangUp(queuePtr, &queuePtr->asks.replySockets[index], 0);
	close(queuePtr->asks.replySockets[index].fd);
	queuePtr->asks.replySockets[index].fd = fd;
	WatchHangUp(queuePtr, &queuePtr->asks.replySockets[index], 1);
	return index;
    }
    if (queuePtr->asks.numReplySockets >= queuePtr->asks.pruneMark) {
	PruneReplySockets(queuePtr);
    }
    if (!GrowList((void **) &queuePtr->asks.replySockets,
	    &queuePtr->asks.replySpace, queuePtr->asks.numReplySockets,
	    sizeof(ReplySocket))) {
	queuePtr->accept.lastErrno = ENOMEM;
	return -1;
    }
    index = queuePtr->asks.numReplySockets++;
    queuePtr->asks.replySockets[index].asker = asker;
    queuePtr->asks.replySockets[index].fd = fd;
    queuePtr->asks.replySockets[index].slotPtr = NULL;
    WatchHangUp(queuePtr, &queuePtr->asks.replySockets[index], 1);
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
    PortState *queuePtr,
    uint64_t asker)
{
    int index;

    for (index = 0; index < queuePtr->asks.numReplySockets; index++) {
	if (queuePtr->asks.replySockets[index].asker == asker) {
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
    PortState *queuePtr,
    int index)
{
    uint64_t asker = queuePtr->asks.replySockets[index].asker;
    int i, kept = 0;

    WatchHangUp(queuePtr, &queuePtr->asks.replySockets[index], 0);
    close(queuePtr->asks.replySockets[index].fd);
    queuePtr->asks.numReplySockets--;
    memmove(queuePtr->asks.replySockets + index,
	    queuePtr->asks.replySockets + index + 1,
	    (queuePtr->asks.numReplySockets - index) * sizeof(ReplySocket));
    for (i = 0; i < queuePtr->asks.numAsks; i++) {
	if (queuePtr->asks.askers[i] != asker) {
	    queuePtr->asks.askers[kept++] = queuePtr->asks.askers[i];
	}
    }
    queuePtr->asks.numAsks = kept;
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
    PortState *queuePtr,
    const ReplySocket *socketPtr,
    int watch)
{
#ifdef SS_LINUX
    struct epoll_event event;

    if (queuePtr->accept.pollFd >= 0) {
	memset(&event, 0, sizeof(event));
	event.data.u64 = socketPtr->asker;
	epoll_ctl(queuePtr->accept.pollFd,
		watch ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, socketPtr->fd, &event);
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
    PortState *queuePtr)
{
    int index = 0;

    while (index < queuePtr->asks.numReplySockets) {
	struct pollfd pfd;

	pfd.fd = queuePtr->asks.replySockets[index].fd;
	pfd.events = POLLOUT;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) >= 0 && (pfd.revents & (POLLHUP | POLLERR))) {
	    ForgetReplySocket(queuePtr, index);
	} else {
	    index++;
	}
    }
    queuePtr->asks.pruneMark = (2 * index > PRUNE_MIN) ? 2 * index : PRUNE_MIN;
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
    PortState *queuePtr,
    int fd,
    const Message *messagePtr)
{
    int i;

    if (!GrowList((void **) &queuePtr->pending.list,
	    &queuePtr->pending.pendingSpace, queuePtr->pending.numPending,
	    sizeof(Pending))) {
	return 0;
    }
    i = queuePtr->pending.numPending;
    while (i > 0
	    && queuePtr->pending.list[i-1].message.sequence
		> messagePtr->sequence) {
	queuePtr->pending.list[i] = queuePtr->pending.list[i-1];
	i--;
    }
    queuePtr->pending.list[i].fd = fd;
    queuePtr->pending.list[i].message = *messagePtr;
    queuePtr->pending.numPending++;
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
    PortState *queuePtr)
{
    close(queuePtr->pending.list[0].fd);
    queuePtr->pending.numPending--;
    memmove(queuePtr->pending.list, queuePtr->pending.list + 1,
	    queuePtr->pending.numPending * sizeof(Pending));
}

/*
 *----------------------------------------------------------------------
 *
 * SendUp --
 *
 *	Sends a message (with a descriptor, or none: fd -1) up the ask
 *	queue without blocking, counted in the board's queuedCount from
 *	before the send, so that the count is never below what the queue
 *	holds: the accept thread stops reading when it reaches 0
 *	(ReadQueue).
 *
 * Results:
 *	0 if sent, else -1 and errno.
 *
 * Side effects:
 *	None here: the caller closes its copy.
 *
 *----------------------------------------------------------------------
 */

static int
SendUp(
    PortState *queuePtr,
    int fd,
    Message *messagePtr)
{
    return SendCounted(queuePtr->asks.askFds[1],
	    &TRAILER(queuePtr->board)->queuedCount, fd, messagePtr);
}

/*
 *----------------------------------------------------------------------
 *
 * SendReady --
 *
 *	queueLock held, serving process: sends a connection into the ready
 *	queue without blocking, counted in the board's readyCount from
 *	before the send, so that the count is never below what the queue
 *	holds: a 'client' that sees 0 skips the read (ClientCmd).
 *
 * Results:
 *	0 if sent, else -1 and errno.
 *
 * Side effects:
 *	None here: the caller closes its copy.
 *
 *----------------------------------------------------------------------
 */

static int
SendReady(
    PortState *queuePtr,
    int fd,
    Message *messagePtr)
{
    return SendCounted(queuePtr->pending.readyFds[1],
	    &TRAILER(queuePtr->board)->readyCount, fd, messagePtr);
}

/*
 *----------------------------------------------------------------------
 *
 * SendCounted --
 *
 *	SendUp's and SendReady's work: sends a message (with descriptor fd,
 *	or none: -1) on sock without blocking, adding 1 to *countPtr before
 *	the send and taking it back if the send fails.
 *
 * Results:
 *	0 if sent, else -1 and errno.
 *
 * Side effects:
 *	None here: the caller closes its copy.
 *
 *----------------------------------------------------------------------
 */

static int
SendCounted(
    int sock,
    int32_t *countPtr,
    int fd,
    Message *messagePtr)
{
    int error;

    __atomic_add_fetch(countPtr, 1, __ATOMIC_SEQ_CST);
    if (ancil_send_fd(sock, fd, messagePtr, sizeof(Message),
	    MSG_DONTWAIT) == 0) {
	return 0;
    }
    error = errno;
    __atomic_sub_fetch(countPtr, 1, __ATOMIC_SEQ_CST);
    errno = error;
    return -1;
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
    PortState *queuePtr)
{
    Message message;
    int fd;

    while (queuePtr->pending.readyMayHold) {
	switch (TakeReady(queuePtr, &fd, &message)) {
	case 1:
	    if (!AddPending(queuePtr, fd, &message)) {
		/* Put it back behind the others rather than lose it. */
		queuePtr->accept.lastErrno = ENOMEM;
		if (SendReady(queuePtr, fd, &message) < 0) {
		    queuePtr->accept.lastErrno = errno;
		}
		close(fd);
		return;
	    }
	    break;
	case 0:
	    queuePtr->pending.readyMayHold = 0;
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
    PortState *queuePtr)
{
    int pending;

    pthread_mutex_lock(&queueLock);
    if (queuePtr->asks.numAsks > 0) {
	DrainReady(queuePtr);
    }
    pending = (queuePtr->pending.numPending > 0);
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
    PortState *queuePtr,
    int *fdPtr,
    Message *messagePtr)
{
    ssize_t got;
    int room;

    for (;;) {
	room = fcntl(queuePtr->pending.readyFds[0], F_DUPFD_CLOEXEC, 0);
	if (room < 0) {
	    queuePtr->accept.lastErrno = errno;
	    return -1;
	}
	close(room);
	got = ancil_take_fd(queuePtr->pending.readyFds[0], fdPtr, messagePtr,
		sizeof(Message), MSG_DONTWAIT);
	if (got > 0) {
	    __atomic_sub_fetch(&TRAILER(queuePtr->board)->readyCount, 1,
		    __ATOMIC_SEQ_CST);
	}
	if (got > 0 && IsConnection(got, *fdPtr, messagePtr)) {
	    return 1;
	}
	if (got > 0 || (got < 0 && errno == EBADMSG)) {
	    queuePtr->accept.lastErrno = EBADMSG;
	    continue;
	}
	if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
	    queuePtr->accept.lastErrno = errno;
	}
	return 0;
    }
}

/*
 *----------------------------------------------------------------------
 *
 * SendToOldestAsk --
 *
 *	Accept thread (or 'close'), queueLock held, a connection pending:
 *	sends the first pending connection over the reply socket of the
 *	oldest ask whose receiver is still there, forgetting the reply
 *	sockets (and asks) of those that are gone.
 *
 * Results:
 *	1 if sent. 0 if not, with *errorPtr 0 (no ask left) or the errno
 *	value of a shortage to retry after (ETOOMANYREFS, ENOBUFS, ENOMEM,
 *	or EAGAIN for a full reply socket): the ask then stays first.
 *
 * Side effects:
 *	A sent connection leaves the pending list, its ask the asks, and
 *	its receiver's slot is stamped handed (StampHanded).
 *
 *----------------------------------------------------------------------
 */

static int
SendToOldestAsk(
    PortState *queuePtr,
    int *errorPtr)
{
    int error;

    while (queuePtr->asks.numAsks > 0) {
	int index = FindReplySocket(queuePtr, queuePtr->asks.askers[0]);
	int sent;

	if (index < 0) {
	    /*
	     * Never so: a receiver's asks are recorded only with its
	     * socket and dropped with it (ReadQueue, ForgetReplySocket).
	     * Should that change, the ask goes, not the connection.
	     */

	    queuePtr->asks.numAsks--;
	    memmove(queuePtr->asks.askers, queuePtr->asks.askers + 1,
		    queuePtr->asks.numAsks * sizeof(uint64_t));
	    continue;
	}
	StampHanded(HandingTo(queuePtr, &queuePtr->asks.replySockets[index]));
	sent = ancil_send_fd(queuePtr->asks.replySockets[index].fd,
		queuePtr->pending.list[0].fd,
		&queuePtr->pending.list[0].message, sizeof(Message),
		MSG_DONTWAIT);

	error = (sent == 0) ? 0 : errno;
	if (error == ETOOMANYREFS || error == ENOBUFS || error == ENOMEM
		|| error == EAGAIN || error == EWOULDBLOCK) {
	    /*
	     * The ask stays first in line; retry shortly. (EAGAIN: the
	     * reply socket is full of connections its process has not
	     * read yet.)
	     */

	    queuePtr->accept.lastErrno = error;
	    *errorPtr = error;
	    return 0;
	}
	if (sent == 0) {
	    queuePtr->asks.numAsks--;
	    memmove(queuePtr->asks.askers, queuePtr->asks.askers + 1,
		    queuePtr->asks.numAsks * sizeof(uint64_t));
	    RemoveFirstPending(queuePtr);
	    return 1;
	}

	/*
	 * EPIPE and the like: the receiver is gone, and its asks with it.
	 */

	ForgetReplySocket(queuePtr, index);
    }
    *errorPtr = 0;
    return 0;
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
    PortState *queuePtr,
    int wait)
{
    for (;;) {
	int error = 0, emptied = 1;

	pthread_mutex_lock(&queueLock);
	if (queuePtr->asks.numAsks == 0 && __atomic_load_n(
		&TRAILER(queuePtr->board)->queuedCount, __ATOMIC_SEQ_CST) > 0) {
	    /* An ask may be queued (the count says none is, else). */
	    emptied = ReadQueue(queuePtr);
	}
	if (queuePtr->asks.numAsks > 0) {
	    /*
	     * An ask raced a connection into the ready queue: that one is
	     * older than the first pending, so it goes first.
	     */

	    DrainReady(queuePtr);
	}
	if (SendToOldestAsk(queuePtr, &error)) {
	    pthread_mutex_unlock(&queueLock);
	    return 1;
	}
	if (queuePtr->asks.numAsks == 0 && emptied) {
	    /*
	     * Nobody is asking: leave it ready for the next 'client' to
	     * take, if the ready queue has room.
	     */

	    if (SendReady(queuePtr, queuePtr->pending.list[0].fd,
		    &queuePtr->pending.list[0].message) == 0) {
		RemoveFirstPending(queuePtr);
		queuePtr->pending.readyMayHold = 1;
		pthread_mutex_unlock(&queueLock);
		return 1;
	    }
	    if (errno != EAGAIN && errno != EWOULDBLOCK) {
		error = errno;
		queuePtr->accept.lastErrno = error;
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
	} else if (!WaitFor(queuePtr, queuePtr->asks.askFds[0], POLLIN,
		queuePtr->pending.readyFds[1], POLLOUT, -1)) {
	    return 0;
	}
    }
}

/*
 *======================================================================
 *
 * The worker's receive and delivery --
 *
 *	A worker's side: 'client' asks (SendAsk) or takes a ready
 *	connection, the reply socket is watched (a watcher thread on Tcl
 *	8, a file handler on Tcl 9), ReceiveConnection takes the
 *	connection and DeliverConnection calls the handler. Then the
 *	other ends of a request ('cancel', refusal, withdrawal) and a
 *	receiver's life.
 *
 *======================================================================
 */

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
    PortState *queuePtr;
    Receiver *receiverPtr;
    Tcl_Size length;
    int fd;

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
    if (forkGeneration != 0 && notifier.forkBreaks) {
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
    if (fd >= 0 || (__atomic_load_n(&TRAILER(queuePtr->board)->readyCount,
	    __ATOMIC_SEQ_CST) > 0
	    && TakeReady(queuePtr, &fd, &receiverPtr->takenMessage) == 1)) {
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
	pthread_mutex_unlock(&queueLock);
	if (AskForConnection(interp, receiverPtr) != TCL_OK) {
	    return TCL_ERROR;
	}
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
 * AskForConnection --
 *
 *	Sends receiverPtr's ask up its queue (SendAsk), waiting once for
 *	room if the queue is full (WaitForRoom), and watches the reply
 *	socket if this ask made it. Called without queueLock.
 *
 * Results:
 *	TCL_OK, or TCL_ERROR with a message and -errorcode in interp
 *	(SetAskError).
 *
 * Side effects:
 *	The request becomes ASKED. On a failure to watch, the reply socket
 *	is closed: the serving process finds it hung up and forgets it, with
 *	its ask.
 *
 *----------------------------------------------------------------------
 */

static int
AskForConnection(
    Tcl_Interp *interp,
    Receiver *receiverPtr)
{
    PortState *queuePtr = receiverPtr->queuePtr;
    int watch, error;

    /*
     * Under the lock, so that a fork never copies a reply socket that the
     * child handler does not know about.
     */

    pthread_mutex_lock(&queueLock);
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
    if (error != 0) {
	return SetAskError(interp, queuePtr, error);
    }
    if (watch && (error = WatchReplySocket(receiverPtr)) != 0) {
	CloseReplySocket(receiverPtr);
	return SetAskError(interp, queuePtr, error);
    }
    receiverPtr->state = ASKED;
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * SetAskError --
 *
 *	Puts the message and -errorcode for an ask that failed with error
 *	(as SendAsk or WatchReplySocket returned it) in interp.
 *
 * Results:
 *	TCL_ERROR.
 *
 * Side effects:
 *	-errorcode {SOCKETSERVER CLOSED port} when the serving process is
 *	gone, {SOCKETSERVER FDLIMIT port} for -1 (no descriptor Tcl's
 *	notifier can watch), else {POSIX ...}.
 *
 *----------------------------------------------------------------------
 */

static int
SetAskError(
    Tcl_Interp *interp,
    PortState *queuePtr,
    int error)
{
    if (error == EPIPE || error == ECONNREFUSED || error == ECONNRESET
	    || error == ENOTCONN) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: the serving "
		"process is gone", queuePtr->port));
	SetPortErrorCode(interp, "CLOSED", queuePtr->port);
    } else if (error == -1) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: every "
		"descriptor below %d is in use and Tcl's notifier can't "
		"watch higher ones", queuePtr->port, FD_SETSIZE));
	SetPortErrorCode(interp, "FDLIMIT", queuePtr->port);
    } else {
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't ask for a connection from port %d: %s",
		queuePtr->port, Tcl_PosixError(interp)));
    }
    return TCL_ERROR;
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
    PortState **queuePtrPtr)
{
    static const char *const options[] = {"-port", NULL};
    int port = -1, index;
    PortState *queuePtr;

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
    PortState *queuePtr)
{
    struct pollfd pfd;

    pfd.fd = queuePtr->asks.askFds[1];
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
	if (pair[0] >= FD_SETSIZE && notifier.usesSelect
		&& !notifier.watchInThread) {
	    close(pair[0]);
	    close(pair[1]);
	    return -1;
	}
    }
    if (SendUp(receiverPtr->queuePtr, pair[1], &message) < 0) {
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
 *	With a watcher: an epoll instance, an eventfd, the event the
 *	watcher queues first (PrepareReplyEvent) and a thread, which blocks
 *	every signal.
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

    if (notifier.watchInThread) {
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
	    event.data.u64 = WATCH_STOP;
	    if (epoll_ctl(receiverPtr->pollFd, EPOLL_CTL_ADD,
		    receiverPtr->stopFd, &event) < 0) {
		error = errno;
	    }
	}
	if (error == 0) {
	    PrepareReplyEvent(receiverPtr);
	    event.events = EPOLLIN | EPOLLONESHOT;
	    event.data.u64 = WATCH_REPLY;
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
 *	arrives in this thread, which fork() could copy unrecorded), never
 *	touches the interpreter, and never allocates: the event is the one
 *	the interpreter's thread made before it armed the socket. (Tcl's
 *	allocator keeps a cache per thread that allocates, freed only by
 *	Tcl_FinalizeThread, which this thread never calls: about 9 KB a
 *	receiver on Tcl 8.6.)
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
	if (event.data.u64 == WATCH_STOP) {
	    return NULL;
	}
	pthread_mutex_lock(&queueLock);
	eventPtr = receiverPtr->readyEventPtr;
	receiverPtr->readyEventPtr = NULL;
	if (eventPtr != NULL) {
	    Tcl_ThreadQueueEvent(receiverPtr->thread, (Tcl_Event *) eventPtr,
		    TCL_QUEUE_TAIL);
	    Tcl_ThreadAlert(receiverPtr->thread);
	}
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
	PrepareReplyEvent(receiverPtr);
	memset(&event, 0, sizeof(event));
	event.events = EPOLLIN | EPOLLONESHOT;
	event.data.u64 = WATCH_REPLY;
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

#ifdef SS_LINUX

/*
 *----------------------------------------------------------------------
 *
 * PrepareReplyEvent --
 *
 *	With a watcher thread, before the reply socket is armed: makes the
 *	ReplyReadable event that the watcher queues when the socket is
 *	readable, unless it has one. Tcl frees it, in this thread, once it
 *	has run (or DeleteEventsOf does); CloseReplySocket frees one never
 *	queued.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Sets readyEventPtr.
 *
 *----------------------------------------------------------------------
 */

static void
PrepareReplyEvent(
    Receiver *receiverPtr)
{
    ReceiverEvent *eventPtr;

    pthread_mutex_lock(&queueLock);
    eventPtr = receiverPtr->readyEventPtr;
    pthread_mutex_unlock(&queueLock);
    if (eventPtr != NULL) {
	return;
    }
    eventPtr = (ReceiverEvent *) ckalloc(sizeof(ReceiverEvent));
    eventPtr->header.proc = ReplyReadable;
    eventPtr->receiverPtr = receiverPtr;
    pthread_mutex_lock(&queueLock);
    receiverPtr->readyEventPtr = eventPtr;
    pthread_mutex_unlock(&queueLock);
}
#endif

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
    PortState *queuePtr = receiverPtr->queuePtr;
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

	if (!notifier.watchInThread) {
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
	    queuePtr->accept.lastErrno = EBADMSG;
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
    if (notifier.watchInThread) {
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
    PortState *queuePtr = receiverPtr->queuePtr;
    Tcl_Obj *handlerObj = receiverPtr->handlerObj;

    if (receiverPtr->state == TAKEN) {
	DeleteEventsOf(receiverPtr, DeliverTaken);
    }
    receiverPtr->state = NO_REQUEST;
    receiverPtr->handlerObj = NULL;
    MarkSlot(receiverPtr, (fd >= 0 ? SLOT_SERVING : SLOT_IDLE), messagePtr);
    if (fd >= 0) {
	pthread_mutex_lock(&queueLock);
	queuePtr->counts.received++;
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
    PortState *queuePtr,
    int fd,
    const Message *messagePtr)
{
    static const int stdTypes[3] = {TCL_STDIN, TCL_STDOUT, TCL_STDERR};
    char host[NI_MAXHOST], service[NI_MAXSERV];
    int i, code;
    Tcl_Channel chan;
    Tcl_Obj *cmdObj;
    Delivered *deliveredPtr;

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
    pthread_mutex_lock(&queueLock);
    deliveredPtr->nextPtr = firstDelivered;
    firstDelivered = deliveredPtr;
    pthread_mutex_unlock(&queueLock);
    Tcl_CreateCloseHandler(chan, ForgetDelivered, deliveredPtr);

    /*
     * As Tcl's own 'socket -server' does: an extra reference keeps the
     * channel alive while the handler runs, even if it closes it.
     */

    Tcl_RegisterChannel(NULL, chan);

    /*
     * No -blocking 1 here (an fcntl pair per request): the descriptor is
     * blocking, as the channel believes. Nothing in socketserver makes a
     * connection non-blocking (accept4 without SOCK_NONBLOCK, the serving
     * process peeks with MSG_DONTWAIT), and 'release' gives it back
     * blocking when a handler made it non-blocking (ReleaseCmd).
     */

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
 *	Close handler of a delivered connection's channel, in whichever
 *	thread closes it: it can no longer be released.
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
    Delivered **linkPtr;

    pthread_mutex_lock(&queueLock);
    for (linkPtr = &firstDelivered; *linkPtr != deliveredPtr;
	    linkPtr = &(*linkPtr)->nextPtr) {
    }
    *linkPtr = deliveredPtr->nextPtr;
    pthread_mutex_unlock(&queueLock);
    ckfree((char *) deliveredPtr);
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
    PortState *queuePtr = receiverPtr->queuePtr;
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
	    error = (SendUp(queuePtr, -1, &message) == 0) ? 0 : errno;
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
	    queuePtr->accept.lastErrno = error;
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
    PortState *queuePtr,
    int fd,
    const Message *messagePtr)
{
    Message message = *messagePtr;

    do {
	message.kind = KIND_RETURN;
	if (SendUp(queuePtr, fd, &message) < 0) {
	    queuePtr->accept.lastErrno = errno;
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
    PortState *queuePtr;
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
    PortState *queuePtr)
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
    receiverPtr->id = ((uint64_t) getpid() << 32) | __atomic_fetch_add(
	    &TRAILER(queuePtr->board)->receivers, 1, __ATOMIC_RELAXED);
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
    PortState *queuePtr)
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
 *	thread) and closes it; frees the event the watcher did not queue.
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
    ReceiverEvent *eventPtr;

    if (receiverPtr->retryTimer != NULL) {
	Tcl_DeleteTimerHandler(receiverPtr->retryTimer);
	receiverPtr->retryTimer = NULL;
    } else if (receiverPtr->replyFd >= 0 && !notifier.watchInThread) {
	Tcl_DeleteFileHandler(receiverPtr->replyFd);
    }
    StopWatcher(receiverPtr);
    DeleteEventsOf(receiverPtr, ReplyReadable);
    pthread_mutex_lock(&queueLock);
    CloseFd(&receiverPtr->replyFd);
    CloseFd(&receiverPtr->pollFd);
    CloseFd(&receiverPtr->stopFd);
    eventPtr = receiverPtr->readyEventPtr;
    receiverPtr->readyEventPtr = NULL;
    pthread_mutex_unlock(&queueLock);
    if (eventPtr != NULL) {
	ckfree((char *) eventPtr);
    }
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
    PortState *queuePtr = receiverPtr->queuePtr;
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
		queuePtr->accept.lastErrno = EMFILE;
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
	if (receiverPtr->slotPtr != NULL) {
	    FreeSlot(receiverPtr->slotPtr, receiverPtr->id);
	}
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
 *======================================================================
 *
 * Release --
 *
 *	'release': a handler gives a keep-alive connection back. It
 *	lingers for the next request (Linger), keeps it for its own
 *	interpreter's next 'client' (the keeper thread), or sends it up
 *	the queue for the serving process to watch.
 *
 *======================================================================
 */

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
 *	output: what Tcl buffered would be lost. The channel may have been
 *	moved to this interpreter's thread from the one it was delivered in
 *	(thread::transfer): only this interpreter's own receiver may keep it
 *	(Linger).
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
 *	without one, or KEEP_NS has passed (the handler works on after
 *	'release': ExpireKept), it goes up the queue after all (SendKept).
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
    const char *name;
    PortState *queuePtr;
    Tcl_DString blockingDs;
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
    if (RefuseUnreleasable(interp, chan, name, &deliveredPtr, &fd)) {
	return TCL_ERROR;
    }
    queuePtr = deliveredPtr->queuePtr;

    /*
     * Whoever takes the connection next trusts it to be blocking
     * (DeliverConnection): undo a handler's -blocking 0. Asking Tcl costs
     * no system call; setting it is refused as any failed fconfigure.
     */

    Tcl_DStringInit(&blockingDs);
    if (Tcl_GetChannelOption(NULL, chan, "-blocking", &blockingDs) == TCL_OK
	    && strcmp(Tcl_DStringValue(&blockingDs), "0") == 0
	    && Tcl_SetChannelOption(interp, chan, "-blocking", "1") != TCL_OK) {
	Tcl_DStringFree(&blockingDs);
	return TCL_ERROR;
    }
    Tcl_DStringFree(&blockingDs);

    /*
     * The descriptor goes up the queue, or is kept for this interpreter's
     * next request (Linger); either way the channel keeps only a dummy
     * (DetachConnection), which its close below ends. After 'close' of
     * the port (error -1), the channel's close ends the connection.
     */

    message = deliveredPtr->message;
    receiverPtr = FindReceiver(dataPtr, queuePtr);
    kept = 0;
    if (__atomic_load_n(&TRAILER(queuePtr->board)->closed,
	    __ATOMIC_ACQUIRE)) {
	/* Nobody would serve the next request: no wait for it. */
	error = -1;
    } else {
	/*
	 * No linger while the serving process is being replaced: the next
	 * request is the new program's (see ReexecCmd).
	 */

	if (receiverPtr != NULL && receiverPtr->state == NO_REQUEST
		&& receiverPtr->keptFd < 0
		&& !__atomic_load_n(&TRAILER(queuePtr->board)->replaced,
		    __ATOMIC_ACQUIRE)
		&& Linger(queuePtr, fd)) {
	    kept = KeepForNextRequest(receiverPtr, fd, &message);
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
 * RefuseUnreleasable --
 *
 *	The refusals of 'release': chan (named name) must be a connection
 *	delivered from a queue, with no transformation stacked on it, no
 *	unread input, no unflushed output, and a descriptor.
 *
 * Results:
 *	0 with *deliveredPtrPtr and *fdPtr set if chan may be released; 1
 *	with a message and -errorcode {SOCKETSERVER NOTCONNECTION channel}
 *	or {SOCKETSERVER STACKED|UNREAD|UNFLUSHED port} in interp if not.
 *
 * Side effects:
 *	None: a refused channel is left as it was.
 *
 *----------------------------------------------------------------------
 */

static int
RefuseUnreleasable(
    Tcl_Interp *interp,
    Tcl_Channel chan,
    const char *name,
    Delivered **deliveredPtrPtr,
    int *fdPtr)
{
    Delivered *deliveredPtr;
    ClientData handle;
    const char *code = NULL;

    pthread_mutex_lock(&queueLock);
    for (deliveredPtr = firstDelivered; deliveredPtr != NULL
	    && deliveredPtr->chan != chan; deliveredPtr = deliveredPtr->nextPtr) {
    }
    pthread_mutex_unlock(&queueLock);
    *deliveredPtrPtr = deliveredPtr;
    if (deliveredPtr == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": not a "
		"connection from a socketserver queue", name));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOTCONNECTION", name, NULL);
	return 1;
    }
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
    } else if (Tcl_GetChannelHandle(chan, TCL_READABLE, &handle) != TCL_OK
	    || (intptr_t) handle < 0 || (intptr_t) handle > INT_MAX) {
	/*
	 * Never so for the TCP channel made here, whose handle is its
	 * descriptor in either direction; but a number that comes from Tcl
	 * is checked before it is sent anywhere.
	 */

	Tcl_SetObjResult(interp, Tcl_ObjPrintf("can't release \"%s\": it "
		"has no descriptor", name));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "NOTCONNECTION", name, NULL);
	return 1;
    }
    if (code != NULL) {
	SetPortErrorCode(interp, code, deliveredPtr->queuePtr->port);
	return 1;
    }
    *fdPtr = (int) (intptr_t) handle;
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * KeepForNextRequest --
 *
 *	Keeps a released connection, whose next request Linger found, for
 *	receiverPtr's next 'client': a close-on-exec copy of fd becomes its
 *	kept connection and fd is detached from its channel
 *	(DetachConnection).
 *
 * Results:
 *	1 if kept, 0 if not (no descriptor for the copy, or the detach
 *	failed): then the caller sends fd up the queue.
 *
 * Side effects:
 *	A kept connection goes up the queue after all when the event loop
 *	is next idle without a 'client' (SendKeptWhenIdle) or after KEEP_NS
 *	(the keeper, KeepFor).
 *
 *----------------------------------------------------------------------
 */

static int
KeepForNextRequest(
    Receiver *receiverPtr,
    int fd,
    const Message *messagePtr)
{
    int kept;

    /* The keeper leaves it alone until it is detached. */
    pthread_mutex_lock(&queueLock);
    receiverPtr->keptFd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    receiverPtr->keptMessage = *messagePtr;
    receiverPtr->keptUntil = UINT64_MAX;
    pthread_mutex_unlock(&queueLock);
    kept = (receiverPtr->keptFd >= 0 && DetachConnection(fd) == 0);
    pthread_mutex_lock(&queueLock);
    if (kept) {
	KeepFor(receiverPtr);
    } else {
	CloseFd(&receiverPtr->keptFd);
    }
    pthread_mutex_unlock(&queueLock);
    if (kept) {
	Tcl_DoWhenIdle(SendKeptWhenIdle, receiverPtr);
    }
    return kept;
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
 *	Makes the socketpair at the first call (releaseDummyFd). Tcl 8.6
 *	closes a socket channel with close() alone, which drops only this
 *	process's copy: there the descriptor stays (no dup3 per release).
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
    if (!closeShutsDown) {
	return 0;
    }
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
    PortState *queuePtr,
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
	    error = (SendUp(queuePtr, fd, messagePtr) == 0) ? 0 : errno;
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
    PortState *queuePtr)
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
 *	1 if the next request is there and nobody waits, else 0 (also if
 *	the serving process's -readyafter mark can't be read: the serving
 *	process then judges).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
Linger(
    PortState *queuePtr,
    int fd)
{
    struct pollfd fds[2];
    struct timespec wait = {0, LINGER_US * 1000L};
    char mark[MARK_MAX];
    size_t markLength;
    int readyBytes = 0;

    /*
     * A count of 0 says the ready queue is empty (it is never below what
     * the queue holds); above 0, ask the queue itself.
     */

    if (__atomic_load_n(&TRAILER(queuePtr->board)->readyCount,
	    __ATOMIC_SEQ_CST) > 0
	    && (ioctl(queuePtr->pending.readyFds[0], FIONREAD, &readyBytes) < 0
	    || readyBytes > 0)) {
	return 0;
    }
    fds[0].fd = fd;
    fds[1].fd = queuePtr->pending.readyFds[0];
    fds[0].events = fds[1].events = POLLIN;
#ifdef POLLRDHUP
    fds[0].events |= POLLRDHUP;
#endif
    fds[0].revents = fds[1].revents = 0;
    if (ppoll(fds, 2, &wait, NULL) <= 0 || fds[1].revents != 0
	    || !(fds[0].revents & POLLIN)
	    || !ReadMark(TRAILER(queuePtr->board), mark, &markLength)) {
	return 0;
    }
#ifdef POLLRDHUP
    if (fds[0].revents == POLLIN && markLength == 0) {
	/* Readable without a hang-up: bytes, all that is asked. No peek. */
	return 1;
    }
#endif
    return Readiness(fd, mark, markLength) == CONN_HAS_DATA;
}

/*
 *----------------------------------------------------------------------
 *
 * ReadMark --
 *
 *	Copies the serving process's -readyafter mark from the scoreboard's
 *	trailer, between two equal even values of markSeq ('server' may be
 *	writing it). Any process of the queue can write there: a length
 *	above MARK_MAX is no mark.
 *
 * Results:
 *	1 with the mark in mark (MARK_MAX bytes of room) and its length in
 *	*lengthPtr; 0 if no whole and valid copy could be read.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ReadMark(
    const BoardTrailer *trailerPtr,
    char *mark,
    size_t *lengthPtr)
{
    uint32_t seq, length;
    int tries;

    for (tries = 0; tries < SEQ_TRIES; tries++) {
	seq = __atomic_load_n(&trailerPtr->markSeq, __ATOMIC_ACQUIRE);
	length = __atomic_load_n(&trailerPtr->markLength, __ATOMIC_RELAXED);
	memcpy(mark, trailerPtr->mark, MARK_MAX);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (seq % 2 == 0 && seq == __atomic_load_n(&trailerPtr->markSeq,
		__ATOMIC_RELAXED)) {
	    *lengthPtr = length;
	    return length <= MARK_MAX;
	}
    }
    return 0;
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
    PortState *queuePtr = receiverPtr->queuePtr;
    Message message = receiverPtr->keptMessage;

    int error;

    if (receiverPtr->keptFd < 0) {
	return;
    }
    error = SendReleased(queuePtr, receiverPtr->keptFd, &message, 0);
    if (error > 0) {
	queuePtr->accept.lastErrno = error;
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
 * KeepFor --
 *
 *	queueLock held: 'release' has kept a connection for receiverPtr's
 *	next 'client': it waits KEEP_NS for it, then the keeper sends it
 *	up the queue (ExpireKept). Starts the keeper, or signals it if it
 *	waits for a keep; an awake keeper finds the deadline by itself.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The first keep of a process makes its keeper thread, which blocks
 *	every signal. If it can't, the connection waits for the event loop
 *	to be idle as before (ENOMEM or EAGAIN in lastErrno).
 *
 *----------------------------------------------------------------------
 */

static void
KeepFor(
    Receiver *receiverPtr)
{
    struct timespec now;
    sigset_t all, old;
    int error;

    clock_gettime(CLOCK_MONOTONIC, &now);
    receiverPtr->keptUntil = (uint64_t) now.tv_sec * 1000000000u
	    + (uint64_t) now.tv_nsec + KEEP_NS;
    keepCount++;
    if (keeperState == KEEPER_IDLE) {
	keeperState = KEEPER_AWAKE;
	pthread_cond_signal(&keeperCond);
    } else if (keeperState == KEEPER_NONE) {
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	error = pthread_create(&keeper, NULL, ExpireKept, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (error != 0) {
	    receiverPtr->queuePtr->accept.lastErrno = error;
	} else {
	    keeperState = KEEPER_AWAKE;
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * ExpireKept --
 *
 *	The keeper thread: sends up the queue every kept connection whose
 *	interpreter has not asked for it by its deadline (SendKept), then
 *	sleeps until the next deadline; see keeperState. It never touches
 *	an interpreter.
 *
 * Results:
 *	NULL, once told to stop (StopKeeper).
 *
 * Side effects:
 *	See SendKept.
 *
 *----------------------------------------------------------------------
 */

static void *
ExpireKept(
    void *clientData)
{
    Receiver *receiverPtr;
    struct timespec now, until;
    uint64_t nowNs, first, seen = 0;

    (void) clientData;
    pthread_mutex_lock(&queueLock);
    while (keeperState != KEEPER_STOP) {
	clock_gettime(CLOCK_MONOTONIC, &now);
	nowNs = (uint64_t) now.tv_sec * 1000000000u + (uint64_t) now.tv_nsec;
	first = 0;
	for (receiverPtr = allReceivers; receiverPtr != NULL;
		receiverPtr = receiverPtr->nextInProcess) {
	    if (receiverPtr->keptFd < 0) {
		continue;
	    }
	    if (receiverPtr->keptUntil <= nowNs) {
		SendKept(receiverPtr);
	    } else if (first == 0 || receiverPtr->keptUntil < first) {
		first = receiverPtr->keptUntil;
	    }
	}
	if (first == 0 && seen == keepCount) {
	    /* Nothing kept, none since the last look: until a keep. */
	    keeperState = KEEPER_IDLE;
	    pthread_cond_wait(&keeperCond, &queueLock);
	    if (keeperState == KEEPER_IDLE) {
		keeperState = KEEPER_AWAKE;
	    }
	    continue;
	}
	seen = keepCount;
	if (first == 0 || first == UINT64_MAX) {
	    first = nowNs + KEEP_NS;
	}
	until.tv_sec = (time_t) (first / 1000000000u);
	until.tv_nsec = (long) (first % 1000000000u);
	pthread_cond_timedwait(&keeperCond, &queueLock, &until);
    }
    pthread_mutex_unlock(&queueLock);
    return NULL;
}

/*
 *----------------------------------------------------------------------
 *
 * StopKeeper --
 *
 *	queueLock not held: ends and joins the keeper thread, if the
 *	process has one.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Kept connections wait for their interpreters (or ReturnReceived).
 *
 *----------------------------------------------------------------------
 */

static void
StopKeeper(void)
{
    pthread_mutex_lock(&queueLock);
    if (keeperState == KEEPER_NONE || keeperState == KEEPER_FAILED) {
	pthread_mutex_unlock(&queueLock);
	return;
    }
    keeperState = KEEPER_STOP;
    pthread_cond_signal(&keeperCond);
    pthread_mutex_unlock(&queueLock);
    pthread_join(keeper, NULL);
    pthread_mutex_lock(&queueLock);
    keeperState = KEEPER_NONE;
    pthread_mutex_unlock(&queueLock);
}

/*
 *----------------------------------------------------------------------
 *
 * InitKeeperCond --
 *
 *	queueLock held: makes keeperCond, whose timed waits count on
 *	CLOCK_MONOTONIC: at setup, and again in a forked child, where the
 *	parent's keeper may have left it with a waiter that is not there.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	If it can't (no memory), the process has no keeper (KEEPER_FAILED):
 *	its kept connections wait for the event loop to be idle.
 *
 *----------------------------------------------------------------------
 */

static void
InitKeeperCond(void)
{
    pthread_condattr_t attr;

    if (pthread_condattr_init(&attr) != 0) {
	keeperState = KEEPER_FAILED;
	return;
    }
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
	    || pthread_cond_init(&keeperCond, &attr) != 0) {
	keeperState = KEEPER_FAILED;
    }
    pthread_condattr_destroy(&attr);
}

/*
 *======================================================================
 *
 * The scoreboard --
 *
 *	The shared memory in which each receiver says what it does
 *	(Slot), and the trailer every process of the port reads: making
 *	and mapping it, claiming, marking and freeing slots, and reading
 *	it for 'info' (BoardObj).
 *
 *======================================================================
 */

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
 *	served and this process's start time; or NULL if every slot is
 *	taken (the receiver then works without one, and 'info' does not
 *	list it).
 *
 *----------------------------------------------------------------------
 */

static void
ClaimSlot(
    Receiver *receiverPtr)
{
    Slot *board = receiverPtr->queuePtr->board;
    uint32_t started = StartMark(getpid());
    int i, pass;

    receiverPtr->slotPtr = NULL;
    for (pass = 0; pass < 2; pass++) {
	for (i = 0; i < BOARD_SLOTS; i++) {
	    uint64_t owner = __atomic_load_n(&board[i].asker,
		    __ATOMIC_ACQUIRE);

	    /*
	     * A free slot; or, once there is none, one whose process is gone
	     * and was never read so by anyone: freed first, so that it is
	     * taken clear.
	     */

	    if (pass == 1 && owner != 0) {
		pid_t pid = SlotPid(owner);

		if ((pid == 0 || OwnerGone(pid, (owner > UINT32_MAX)
			? __atomic_load_n(&board[i].started, __ATOMIC_RELAXED)
			: 0)) && FreeSlot(&board[i], owner)) {
		    owner = 0;
		}
	    }
	    if (owner == 0 && __atomic_compare_exchange_n(&board[i].asker,
		    &owner, receiverPtr->id, 0, __ATOMIC_ACQ_REL,
		    __ATOMIC_RELAXED)) {
		receiverPtr->slotPtr = &board[i];
		__atomic_store_n(&board[i].started, started, __ATOMIC_RELAXED);
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

    /* Odd while it writes, whatever another process left there. */
    seq = __atomic_load_n(&slotPtr->seq, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&slotPtr->seq, seq, __ATOMIC_RELAXED);
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
    __atomic_store_n(&slotPtr->seq, seq + 1, __ATOMIC_RELEASE);
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
    PortState *queuePtr,
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
 *	Frees a scoreboard slot if owner (its receiver's id, or what a
 *	reader found there) still holds it: takes it with this process's
 *	pid (never an id: see Slot), clears its state and start time, then
 *	makes it free.
 *
 * Results:
 *	1 if freed, 0 if the slot had changed.
 *
 * Side effects:
 *	See above.
 *
 *----------------------------------------------------------------------
 */

static int
FreeSlot(
    Slot *slotPtr,
    uint64_t owner)
{
    uint32_t seq;

    if (!__atomic_compare_exchange_n(&slotPtr->asker, &owner,
	    (uint64_t) getpid(), 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
	return 0;
    }
    seq = __atomic_load_n(&slotPtr->seq, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&slotPtr->seq, seq, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&slotPtr->state, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&slotPtr->started, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&slotPtr->seq, seq + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&slotPtr->asker, 0, __ATOMIC_RELEASE);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * SlotPid --
 *
 *	The process a slot's asker names: a receiver id's high half, or
 *	below 2^32 the pid of a process freeing the slot.
 *
 * Results:
 *	The pid, or 0 for a free slot or a value no process writes (a pid
 *	that would be negative).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static pid_t
SlotPid(
    uint64_t asker)
{
    uint64_t pid = (asker > UINT32_MAX) ? asker >> 32 : asker;

    return (pid <= INT_MAX) ? (pid_t) pid : 0;
}

/*
 *----------------------------------------------------------------------
 *
 * OwnerGone --
 *
 *	Whether the process that holds a slot is gone: no process has its
 *	pid, or the one that has it started at another time than the slot
 *	says (the pid was reused). A process that exited but is not
 *	collected yet is not gone: its parent may still read its slot.
 *
 * Results:
 *	1 if gone; 0 if it lives, or where that can't be told.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
OwnerGone(
    pid_t pid,
    uint32_t started)
{
    uint32_t now;

    if (kill(pid, 0) < 0 && errno == ESRCH) {
	return 1;
    }
    if (started == 0) {
	return 0;
    }
    now = StartMark(pid);
    return (now != 0 && now != started);
}

/*
 *----------------------------------------------------------------------
 *
 * StartMark --
 *
 *	When process pid started, as a slot keeps it: on Linux its start
 *	time in clock ticks since boot (field 22 of /proc/PID/stat), which
 *	a zombie keeps and a process that reuses its pid does not share,
 *	folded into 1 .. 2^32-1.
 *
 * Results:
 *	The mark, or 0 if it can't be read (no such process; no /proc;
 *	elsewhere than Linux).
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static uint32_t
StartMark(
    pid_t pid)
{
#ifdef SS_LINUX
    char path[32], text[1024], *p;
    unsigned long long start;
    ssize_t got;
    int fd, field;

    snprintf(path, sizeof(path), "/proc/%ld/stat", (long) pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
	return 0;
    }
    do {
	got = read(fd, text, sizeof(text) - 1);
    } while (got < 0 && errno == EINTR);
    close(fd);
    if (got <= 0) {
	return 0;
    }
    text[got] = '\0';

    /*
     * The command name, field 2, is in parentheses and may hold spaces
     * and parentheses: the fields are counted from its last ')'.
     */

    p = strrchr(text, ')');
    for (field = 3; p != NULL && field <= 22; field++) {
	p = strchr(p + 1, ' ');
    }
    if (p == NULL || sscanf(p, " %llu", &start) != 1) {
	return 0;
    }
    return (uint32_t) (start % UINT32_MAX) + 1;
#else
    (void) pid;
    return 0;
#endif
}

/*
 *----------------------------------------------------------------------
 *
 * BoardObj --
 *
 *	What every receiver of a queue is doing, read from its scoreboard.
 *	Slots of processes that are gone (collected after they ended, or
 *	whose pid another process has taken since) are freed on the way;
 *	one whose fields no receiver would write is left out.
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
    PortState *queuePtr)
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
	    copy.asker = __atomic_load_n(&slotPtr->asker, __ATOMIC_ACQUIRE);
	    copy.started = __atomic_load_n(&slotPtr->started,
		    __ATOMIC_RELAXED);
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
		&& ++tries < SEQ_TRIES);
	copy.handed = __atomic_load_n(&slotPtr->handed, __ATOMIC_RELAXED);
	if (copy.asker == 0) {
	    continue;
	}

	/*
	 * Whoever wrote the slot may be gone even if it died while writing
	 * (started is written only with the slot taken: it is its owner's,
	 * or 0). What no receiver writes is not listed: an asker below
	 * 2^32 (a slot being freed), a state or a count out of range.
	 */

	pid = SlotPid(copy.asker);
	if (pid == 0 || OwnerGone(pid, (copy.asker > UINT32_MAX)
		? copy.started : 0)) {
	    FreeSlot(slotPtr, copy.asker);
	    continue;
	}
	if (tries == SEQ_TRIES || copy.asker <= UINT32_MAX
		|| copy.state < SLOT_WAITING || copy.state > SLOT_EXITED
		|| copy.served > (uint64_t) INT64_MAX) {
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
	    Tcl_Obj *peerObj[2];

	    if (inet_ntop(copy.family, copy.peerAddr, text, sizeof(text))
		    == NULL) {
		text[0] = '\0';
	    }
	    peerObj[0] = Tcl_NewStringObj(text, -1);
	    peerObj[1] = Tcl_NewIntObj((int) copy.peerPort);
	    PUT("peer", Tcl_NewListObj(2, peerObj));
	}
#undef PUT
	Tcl_ListObjAppendElement(NULL, listObj, workerObj);
    }
    return listObj;
}

/*
 *======================================================================
 *
 * Server, close and info --
 *
 *	The serving process's commands: 'server' (its options, the
 *	listener, a port's state made once and kept), 'close', and
 *	'info', which describes a port.
 *
 *======================================================================
 */

/*
 *----------------------------------------------------------------------
 *
 * ParseServerOptions --
 *
 *	Reads the options and the port of 'server' (objv[2] on) into
 *	*optionsPtr, as Tcl's own 'socket' reads options: up to the first
 *	word that does not start with "-", each option's value the word
 *	after it.
 *
 * Results:
 *	TCL_OK with *optionsPtr set, or TCL_ERROR with a message and
 *	-errorcode (TCL ARGUMENT ..., TCL VALUE ...) in interp.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ParseServerOptions(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[],
    ServerOptions *optionsPtr)
{
    static const char *const options[] = {
	"-backlog", "-fd", "-keepalive", "-myaddr", "-ready", "-readyafter",
	NULL
    };
    enum options {
	OPT_BACKLOG, OPT_FD, OPT_KEEPALIVE, OPT_MYADDR, OPT_READY,
	OPT_READYAFTER
    };
    int i, index, bindOptions = 0;

    *optionsPtr = serverDefaults;

    for (i = 2; i < objc && Tcl_GetString(objv[i])[0] == '-'; i++) {
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
	    if (!GetIntInRange(objv[i], 1, INT_MAX, &optionsPtr->backlog)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected positive integer backlog but got \"%s\"",
			Tcl_GetString(objv[i])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "BACKLOG", NULL);
		return TCL_ERROR;
	    }
	    bindOptions = 1;
	    break;
	case OPT_FD:
	    if (!GetIntInRange(objv[i], 0, INT_MAX, &optionsPtr->adoptFd)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected a descriptor number but got \"%s\"",
			Tcl_GetString(objv[i])));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "FD", NULL);
		return TCL_ERROR;
	    }
	    break;
	case OPT_MYADDR:
	    optionsPtr->myaddr = Tcl_GetString(objv[i]);
	    bindOptions = 1;
	    break;
	case OPT_READYAFTER:
	    optionsPtr->mark = Tcl_GetStringFromObj(objv[i],
		    &optionsPtr->markLength);
	    if (optionsPtr->markLength > MARK_MAX
		    || !IsAscii(optionsPtr->mark, optionsPtr->markLength)) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"expected at most %d ASCII characters, none NUL, for "
			"-readyafter but got \"%s\"", MARK_MAX,
			optionsPtr->mark));
		Tcl_SetErrorCode(interp, "TCL", "VALUE", "READYAFTER", NULL);
		return TCL_ERROR;
	    }
	    break;
	case OPT_KEEPALIVE:
	case OPT_READY:
	    if (ParseSeconds(interp, options[index], objv[i],
		    (index == OPT_READY) ? "READY" : "KEEPALIVE",
		    &optionsPtr->timeoutNs[(index == OPT_READY)
			    ? WATCH_SILENT : WATCH_PARKED]) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	}
    }
    if ((optionsPtr->adoptFd < 0 && i != objc - 1)
	    || (optionsPtr->adoptFd >= 0 && i < objc - 1)) {
	Tcl_WrongNumArgs(interp, 2, objv,
		"?-ready s? ?-readyafter string? ?-keepalive s? ?-myaddr addr? "
		"?-backlog n? port | -fd fd ?port?");
	return TCL_ERROR;
    }
    if (optionsPtr->adoptFd >= 0 && bindOptions) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"-fd takes a socket that listens already: -myaddr and "
		"-backlog don't apply", -1));
	Tcl_SetErrorCode(interp, "TCL", "ARGUMENT", "FD", NULL);
	return TCL_ERROR;
    }
    if (i == objc - 1
	    && ParsePort(interp, objv[i], &optionsPtr->port) != TCL_OK) {
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * ParseSeconds --
 *
 *	Reads the value of 'server -ready' or -keepalive: a number of
 *	seconds from 0 to 86400.
 *
 * Results:
 *	TCL_OK with *nsPtr set (a time too short to count in ns is still no
 *	0: 1 ns), or TCL_ERROR with a message and -errorcode {TCL VALUE
 *	code} in interp.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ParseSeconds(
    Tcl_Interp *interp,
    const char *option,
    Tcl_Obj *valueObj,
    const char *code,
    uint64_t *nsPtr)
{
    double seconds;

    if (Tcl_GetDoubleFromObj(NULL, valueObj, &seconds) != TCL_OK
	    || !(seconds >= 0 && seconds <= 86400)) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"expected a number of seconds from 0 to 86400 for %s "
		"but got \"%s\"", option, Tcl_GetString(valueObj)));
	Tcl_SetErrorCode(interp, "TCL", "VALUE", code, NULL);
	return TCL_ERROR;
    }
    *nsPtr = (seconds > 0 && seconds < 1e-9) ? 1
	    : (uint64_t) (seconds * 1e9);
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * MakePortStateLocked --
 *
 *	Makes the state of a port this process has never served: its
 *	pending list, its queue and ready queue (MakeQueueSockets) and its
 *	scoreboard (MakeBoard), and adds it to the process's list
 *	(AddQueue). Called without queueLock.
 *
 * Results:
 *	The new port's state, with queueLock held; or NULL, without the
 *	lock, with a message and -errorcode {POSIX ...} in interp.
 *
 * Side effects:
 *	On failure, listenFd is closed and nothing made is left open.
 *
 *----------------------------------------------------------------------
 */

static PortState *
MakePortStateLocked(
    Tcl_Interp *interp,
    int port,
    int listenFd)
{
    int queueFds[2], readyFds[2], boardFd, i, error;
    const char *what = "the queue";
    const char *how = "";
    Slot *board;
    PortState *queuePtr;

    /*
     * The accept thread accepts only while nothing is pending, so with
     * this room an accepted connection always fits in the list.
     */

    Pending *pending = malloc(LIST_MIN * sizeof(Pending));

    if (pending == NULL) {
	errno = ENOMEM;
	goto failed;
    }
    if (MakeQueueSockets(queueFds, readyFds) != 0) {
	how = " (SOCK_SEQPACKET socketpairs)";
	goto failed;
    }
    if ((board = MakeBoard(&boardFd)) == NULL) {
	error = errno;
	for (i = 0; i < 2; i++) {
	    close(queueFds[i]);
	    close(readyFds[i]);
	}
	errno = error;
	what = "the scoreboard";
	goto failed;
    }
    pthread_mutex_lock(&queueLock);
    queuePtr = AddQueue(port, queueFds, readyFds, boardFd, board);
    queuePtr->pending.list = pending;
    queuePtr->pending.pendingSpace = LIST_MIN;
    return queuePtr;

  failed:
    error = errno;
    free(pending);
    close(listenFd);
    errno = error;
    Tcl_SetObjResult(interp, Tcl_ObjPrintf("couldn't create %s for port "
	    "%d%s: %s", what, port, how, Tcl_PosixError(interp)));
    return NULL;
}

/*
 *----------------------------------------------------------------------
 *
 * PublishMarkAndReopen --
 *
 *	Writes the workers' copy of the -readyafter mark into the port's
 *	scoreboard trailer, whole (a seqlock: a worker that looked at closed
 *	before the last 'close' may read it now), then clears closed: one
 *	that sees the port open sees its mark. Called with queueLock held.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	From here on, 'release' in workers sends connections up again.
 *
 *----------------------------------------------------------------------
 */

static void
PublishMarkAndReopen(
    PortState *queuePtr,
    const char *mark,
    Tcl_Size markLength)
{
    BoardTrailer *trailerPtr = TRAILER(queuePtr->board);
    uint32_t markSeq;

    markSeq = __atomic_load_n(&trailerPtr->markSeq, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&trailerPtr->markSeq, markSeq, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(trailerPtr->mark, mark, (size_t) markLength);
    __atomic_store_n(&trailerPtr->markLength, (uint32_t) markLength,
	    __ATOMIC_RELAXED);
    __atomic_store_n(&trailerPtr->markSeq, markSeq + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&trailerPtr->closed, 0, __ATOMIC_SEQ_CST);
}

/*
 *----------------------------------------------------------------------
 *
 * ServerCmd --
 *
 *	$cmd server ?-ready s? ?-readyafter string? ?-keepalive s?
 *	    ?-myaddr addr? ?-backlog n? port
 *	$cmd server ?-ready s? ?-readyafter string? ?-keepalive s?
 *	    -fd fd ?port?
 *	Listens on port, or on the listening socket the process inherited
 *	as descriptor fd (systemd's socket activation, an upgrade in place),
 *	and starts the accept thread, creating the port's state or resuming
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
    ServerOptions opt;
    struct rlimit limit;
    char boundAddr[NI_MAXHOST];
    int boundPort, listenFd, handedOver;
    PortState *queuePtr;

    if (ParseServerOptions(interp, objc, objv, &opt) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * A port this process knows: refuse before binding, so that the
     * reason is ours and not the parent's listener (EADDRINUSE).
     */

    pthread_mutex_lock(&queueLock);
    queuePtr = (opt.port != 0) ? FindQueue(opt.port) : NULL;
    if (queuePtr != NULL && ClaimRefused(interp, queuePtr)) {
	pthread_mutex_unlock(&queueLock);
	return TCL_ERROR;
    }
    pthread_mutex_unlock(&queueLock);

    if (opt.adoptFd >= 0) {
	if (AdoptListener(interp, opt.adoptFd, opt.port, &listenFd,
		&boundPort, boundAddr) != TCL_OK) {
	    return TCL_ERROR;
	}
    } else if (OpenNewListener(interp, opt.myaddr, opt.port, opt.backlog,
	    &listenFd, &boundPort, boundAddr) != TCL_OK) {
	return TCL_ERROR;
    }

    /*
     * Find or make the state of the bound port, and claim it.
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
	queuePtr = MakePortStateLocked(interp, boundPort, listenFd);
	if (queuePtr == NULL) {
	    return TCL_ERROR;
	}
    }
    queuePtr->accept.state = LISTENING;
    memcpy(queuePtr->watch.mark, opt.mark, (size_t) opt.markLength);
    queuePtr->watch.markLength = (size_t) opt.markLength;
    PublishMarkAndReopen(queuePtr, opt.mark, opt.markLength);
    memcpy(queuePtr->accept.myaddr, boundAddr, sizeof(queuePtr->accept.myaddr));
    memcpy(queuePtr->watch.timeoutNs, opt.timeoutNs, sizeof(opt.timeoutNs));
    queuePtr->counts.passed = queuePtr->counts.ignored = 0;

    /*
     * Watched connections may take half the descriptors this process can
     * have: the other half is the workers' and the application's.
     */

    queuePtr->watch.watchLimit = WATCH_MAX;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
	    && limit.rlim_cur / 2 < WATCH_MAX) {
	queuePtr->watch.watchLimit = (int) (limit.rlim_cur / 2);
    }
    handedOver = (opt.adoptFd >= 0 && AdoptPassed(queuePtr, opt.adoptFd));
    pthread_mutex_unlock(&queueLock);
    if (handedOver) {
	Tcl_UnsetVar2(interp, "env", LISTENER_ENV, TCL_GLOBAL_ONLY);
    }

    if (StartAccepting(interp, queuePtr, listenFd) != TCL_OK) {
	return TCL_ERROR;
    }
    if (opt.adoptFd >= 0) {
	CloseAdopted(opt.adoptFd);
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
	if (fd < 0 || AboveStandard(&fd) < 0) {
	    error = errno;
	    CloseFd(&fd);
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
 *	names it with this port), takes the connections it passed with it
 *	into the pending list, first in line, in the order they were
 *	accepted, or watches them again; and reads the queues it passed
 *	("qFD": its own and those of the programs it replaced) as the
 *	queues of replaced programs (oldAskFds), for what their workers
 *	release or give back. The numbers come in a file that the variable
 *	names ("list=N", version 2) or, from a program of version 1, in the
 *	variable itself. Neither is trusted: an entry is taken only if it
 *	is a decimal number, not listed before, not the listener's nor the
 *	list's, and names a socket of the right type (a TCP connection, or
 *	for a queue a SOCK_SEQPACKET socket) that crossed the exec (not
 *	close-on-exec); every other is counted in queuePtr->ignored and left
 *	alone, as is a list that is refused whole (counted once).
 *
 * Results:
 *	1 if LISTENER_ENV named this listener (the caller removes it, through
 *	Tcl's env array, which a C unsetenv() would leave stale), else 0.
 *
 * Side effects:
 *	The list's file is closed. Each descriptor taken becomes close-on-exec; each connection
 *	taken is counted in queuePtr->passed; one whose client is gone is
 *	closed, one queue more than OLD_QUEUES too.
 *
 *----------------------------------------------------------------------
 */

static int
AdoptPassed(
    PortState *queuePtr,
    int adoptFd)
{
    const char *value = getenv(LISTENER_ENV);
    Tcl_HashTable seen;
    char *list;
    int port, fd, listFd, count, numEntries, isNew;

    if (value == NULL || !ParseDecimal(&value, &port) || *value++ != ' '
	    || !ParseDecimal(&value, &fd) || port != queuePtr->port
	    || fd != adoptFd) {
	/* Not the hand-over of this listener. */
	return 0;
    }
    Tcl_InitHashTable(&seen, TCL_ONE_WORD_KEYS);
    Tcl_CreateHashEntry(&seen, (void *) (intptr_t) adoptFd, &isNew);
    if (strncmp(value, " list=", 6) != 0) {
	AdoptEntries(queuePtr, value, &seen);
    } else {
	value += 6;
	list = NULL;
	if (ParseDecimal(&value, &listFd) && *value == '\0'
		&& listFd != adoptFd) {
	    list = ReadPassedList(listFd, port, adoptFd, &count);
	}
	if (list == NULL) {
	    queuePtr->counts.ignored++;
	} else {
	    Tcl_CreateHashEntry(&seen, (void *) (intptr_t) listFd, &isNew);
	    numEntries = AdoptEntries(queuePtr, strchr(list, '\n') + 1,
		    &seen);

	    /* Entries lost or added on the way. */
	    queuePtr->counts.ignored += abs(count - numEntries);
	    ckfree(list);
	}
    }
    Tcl_DeleteHashTable(&seen);
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * AdoptEntries --
 *
 *	queueLock held: AdoptPassed's work on a list of entries, separated
 *	by spaces and ended by a newline or the end of the string. seenPtr
 *	holds the numbers that may not be taken (again).
 *
 * Results:
 *	How many entries there were.
 *
 * Side effects:
 *	As AdoptPassed; every number read is added to seenPtr.
 *
 *----------------------------------------------------------------------
 */

static int
AdoptEntries(
    PortState *queuePtr,
    const char *entries,
    Tcl_HashTable *seenPtr)
{
    const char *p = entries;
    Message message;
    socklen_t length;
    int fd, kind, isQueue, isNew, i, numEntries = 0;

    for (;; numEntries++) {
	while (*p == ' ') {
	    p++;
	}
	if (*p == '\0' || *p == '\n') {
	    return numEntries;
	}
	kind = -1;
	isQueue = 0;
	if (*p == 's' || *p == 'p') {
	    kind = (*p == 's') ? WATCH_SILENT : WATCH_PARKED;
	    p++;
	} else if (*p == 'q') {
	    isQueue = 1;
	    p++;
	}
	if (!ParseDecimal(&p, &fd)
		|| (*p != ' ' && *p != '\n' && *p != '\0')) {
	    queuePtr->counts.ignored++;
	    while (*p != ' ' && *p != '\n' && *p != '\0') {
		p++;
	    }
	    continue;
	}
	/* 'reexec' passes none at a standard number (AboveStandard). */
	Tcl_CreateHashEntry(seenPtr, (void *) (intptr_t) fd, &isNew);
	isNew = isNew && fd > 2;
	memset(&message, 0, sizeof(message));
	if (isQueue) {
	    if (!isNew || !CrossedExecAsQueue(fd)) {
		queuePtr->counts.ignored++;
		continue;
	    }
	    fcntl(fd, F_SETFD, FD_CLOEXEC);
	    for (i = 0; i < OLD_QUEUES && queuePtr->asks.oldAskFds[i] >= 0; i++) {
	    }
	    if (i < OLD_QUEUES) {
		queuePtr->asks.oldAskFds[i] = fd;
	    } else {
		/* Its workers' releases close their connections. */
		close(fd);
	    }
	    continue;
	}
	length = sizeof(message.addr);
	switch (isNew ? CrossedExec(fd, &message.addr, &length) : 0) {
	case 0:
	    /* Not a connection of ours: someone else's to close. */
	    queuePtr->counts.ignored++;
	    continue;
	case -1:
	    /* Ours, but its client is gone. */
	    close(fd);
	    continue;
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	fd = AboveSelect(fd);
	queuePtr->counts.passed++;
	message.magic = MESSAGE_MAGIC;
	message.addrLen = length;
	if (kind < 0 || (kind == WATCH_SILENT
		&& queuePtr->watch.timeoutNs[WATCH_SILENT] == 0)) {
	    /* Pending, or silent where this program hands over at once. */
	    MakePending(queuePtr, fd, &message);
	} else {
	    WatchConnection(queuePtr, fd, &message, (WatchKind) kind);
	}
    }
}

/*
 *----------------------------------------------------------------------
 *
 * CrossedExec --
 *
 *	Whether fd, a number a hand-over lists, is a TCP connection that
 *	crossed the exec: open and not close-on-exec ('reexec' cleared the
 *	flag; whatever this program opened itself has it), a stream socket
 *	of IPv4 or IPv6 that does not listen.
 *
 * Results:
 *	1 if it is and has a peer, whose address is put in *addrPtr and its
 *	length in *lengthPtr; -1 if it is but its client is gone; 0 if it
 *	is not.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
CrossedExec(
    int fd,
    struct sockaddr_storage *addrPtr,
    socklen_t *lengthPtr)
{
    struct sockaddr_storage local;
    socklen_t length = sizeof(int);
    int flags = fcntl(fd, F_GETFD), type = 0, listening = 1;

    if (flags < 0 || (flags & FD_CLOEXEC)
	    || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0
	    || type != SOCK_STREAM
	    || (length = sizeof(int), getsockopt(fd, SOL_SOCKET,
		SO_ACCEPTCONN, &listening, &length)) < 0
	    || listening
	    || (length = sizeof(local), getsockname(fd,
		(struct sockaddr *) &local, &length)) < 0
	    || (local.ss_family != AF_INET && local.ss_family != AF_INET6)) {
	return 0;
    }
    if (getpeername(fd, (struct sockaddr *) addrPtr, lengthPtr) < 0) {
	return (errno == ENOTCONN) ? -1 : 0;
    }
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * CrossedExecAsQueue --
 *
 *	Whether descriptor fd, named in LISTENER_ENV's list as a queue, is
 *	one that crossed the exec (not close-on-exec): a SOCK_SEQPACKET
 *	socket of the Unix domain.
 *
 * Results:
 *	1 if it is, 0 if it is not.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
CrossedExecAsQueue(
    int fd)
{
    struct sockaddr_storage local;
    socklen_t length = sizeof(int);
    int flags = fcntl(fd, F_GETFD), type = 0;

    return !(flags < 0 || (flags & FD_CLOEXEC)
	    || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0
	    || type != SOCK_SEQPACKET
	    || (length = sizeof(local), getsockname(fd,
		(struct sockaddr *) &local, &length)) < 0
	    || local.ss_family != AF_UNIX);
}

/*
 *----------------------------------------------------------------------
 *
 * ReadPassedList --
 *
 *	Reads the list of connections that 'reexec' wrote for the listener
 *	listenFd of port (WritePassedList) from listFd, which must be a
 *	regular file that crossed the exec, of at most PASSED_MAX bytes,
 *	whose first line is PASSED_MAGIC, PASSED_VERSION, port, listenFd and
 *	the number of entries.
 *
 * Results:
 *	The list, ckalloc()ed and NUL-terminated, its first line included,
 *	with the number of entries in *countPtr; or NULL if it is not such
 *	a list.
 *
 * Side effects:
 *	listFd is closed if it is such a list; any other file is left
 *	alone (it may be the application's).
 *
 *----------------------------------------------------------------------
 */

static char *
ReadPassedList(
    int listFd,
    int port,
    int listenFd,
    int *countPtr)
{
    const char *p;
    struct stat info;
    char *list;
    ssize_t got;
    size_t size = 0;
    int flags = fcntl(listFd, F_GETFD), version, listedPort, listedFd;

    if (flags < 0 || (flags & FD_CLOEXEC) || fstat(listFd, &info) < 0
	    || !S_ISREG(info.st_mode)) {
	return NULL;
    }
    if (info.st_size > PASSED_MAX) {
	return NULL;
    }
    list = ckalloc((size_t) info.st_size + 1);
    while (size < (size_t) info.st_size) {
	got = pread(listFd, list + size, (size_t) info.st_size - size,
		(off_t) size);
	if (got < 0 && errno == EINTR) {
	    continue;
	}
	if (got <= 0) {
	    break;
	}
	size += (size_t) got;
    }
    list[size] = '\0';
    p = list;
    if (strncmp(p, PASSED_MAGIC " ", sizeof(PASSED_MAGIC)) != 0
	    || (p += sizeof(PASSED_MAGIC), !ParseDecimal(&p, &version))
	    || version != PASSED_VERSION || *p++ != ' '
	    || !ParseDecimal(&p, &listedPort) || listedPort != port
	    || *p++ != ' ' || !ParseDecimal(&p, &listedFd)
	    || listedFd != listenFd || *p++ != ' '
	    || !ParseDecimal(&p, countPtr) || *p != '\n') {
	ckfree(list);
	return NULL;
    }
    close(listFd);
    return list;
}

/*
 *----------------------------------------------------------------------
 *
 * ParseDecimal --
 *
 *	Reads a decimal number from 0 to INT_MAX at *textPtr: digits only,
 *	no sign, space or leading zero (but for 0 itself).
 *
 * Results:
 *	1 with the number in *valuePtr and *textPtr past it, or 0 with both
 *	unchanged.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
ParseDecimal(
    const char **textPtr,
    int *valuePtr)
{
    const char *p = *textPtr;
    long long value = 0;

    if (!isdigit((unsigned char) p[0])
	    || (p[0] == '0' && isdigit((unsigned char) p[1]))) {
	return 0;
    }
    while (isdigit((unsigned char) *p)) {
	value = value * 10 + (*p++ - '0');
	if (value > INT_MAX) {
	    return 0;
	}
    }
    *valuePtr = (int) value;
    *textPtr = p;
    return 1;
}

/*
 *----------------------------------------------------------------------
 *
 * WritePassedList --
 *
 *	queueLock held, 'reexec': writes the numbers of the connections not
 *	handed over yet, pending and watched, to a new anonymous file, as
 *	ReadPassedList reads them. One environment string would hold at
 *	most 128 KiB on Linux (MAX_ARG_STRLEN): some 18,000 connections, and
 *	an exec with more failed (E2BIG).
 *
 * Results:
 *	The file's descriptor, close-on-exec; or -1 with errno set and
 *	nothing left open.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
WritePassedList(
    PortState *queuePtr,
    int listenFd)
{
    Tcl_Obj *listObj;
    const char *bytes;
    Tcl_Size length, done = 0;
    ssize_t written;
    int fd, i, kind, index, numQueues, error = 0;

#ifdef SS_LINUX
    fd = memfd_create("socketserver-passed", MFD_CLOEXEC);
#else
    char path[] = "/tmp/socketserver-passedXXXXXX";

    fd = mkstemp(path);
    if (fd >= 0) {
	unlink(path);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
#endif
    if (fd < 0 || AboveStandard(&fd) < 0) {
	CloseFd(&fd);
	return -1;
    }
    numQueues = (queuePtr->asks.askFds[0] >= 0);
    for (i = 0; i < OLD_QUEUES; i++) {
	numQueues += (queuePtr->asks.oldAskFds[i] >= 0);
    }
    listObj = Tcl_ObjPrintf(PASSED_MAGIC " %d %d %d %d\n", PASSED_VERSION,
	    queuePtr->port, listenFd, queuePtr->pending.numPending
	    + queuePtr->watch.numWatched[WATCH_SILENT]
	    + queuePtr->watch.numWatched[WATCH_PARKED] + numQueues);
    Tcl_IncrRefCount(listObj);
    for (i = 0; i < queuePtr->pending.numPending; i++) {
	Tcl_AppendPrintfToObj(listObj, "%d ", queuePtr->pending.list[i].fd);
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->watch.firstWatched[kind]; index >= 0;
		index = queuePtr->watch.entries[index].next) {
	    Tcl_AppendPrintfToObj(listObj, "%c%d ",
		    (kind == WATCH_SILENT) ? 's' : 'p',
		    queuePtr->watch.entries[index].fd);
	}
    }
    for (i = -1; i < OLD_QUEUES; i++) {
	int queueFd = (i < 0) ? queuePtr->asks.askFds[0] : queuePtr->asks.oldAskFds[i];

	if (queueFd >= 0) {
	    Tcl_AppendPrintfToObj(listObj, "q%d ", queueFd);
	}
    }
    Tcl_AppendToObj(listObj, "\n", 1);
    bytes = Tcl_GetStringFromObj(listObj, &length);
    while (done < length) {
	written = write(fd, bytes + done, (size_t) (length - done));
	if (written < 0 && errno == EINTR) {
	    continue;
	}
	if (written < 0) {
	    error = errno;
	    break;
	}
	done += written;
    }
    Tcl_DecrRefCount(listObj);
    if (error != 0) {
	close(fd);
	errno = error;
	return -1;
    }
    return fd;
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
 *	Makes the two socketpairs of a new queue, close-on-exec and above the
 *	standard numbers (the queue crosses a 'reexec'): the one
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
	if (AboveStandard(&readyFds[0]) == 0 && AboveStandard(&readyFds[1]) == 0
		&& AboveStandard(&askFds[0]) == 0
		&& AboveStandard(&askFds[1]) == 0) {
	    return 0;
	}
	error = errno;
	close(askFds[0]);
	close(askFds[1]);
    } else {
	error = errno;
    }
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

static PortState *
AddQueue(
    int port,
    const int askFds[2],
    const int readyFds[2],
    int boardFd,
    Slot *board)
{
    PortState *queuePtr = (PortState *) ckalloc(sizeof(PortState));
    PortState **linkPtr = &firstQueuePtr;
    int i;

    memset(queuePtr, 0, sizeof(PortState));
    queuePtr->port = port;
    queuePtr->asks.askFds[0] = askFds[0];
    queuePtr->asks.askFds[1] = askFds[1];
    queuePtr->pending.readyFds[0] = readyFds[0];
    queuePtr->pending.readyFds[1] = readyFds[1];
    queuePtr->boardFd = boardFd;
    queuePtr->board = board;
    queuePtr->accept.listenFd = -1;
    queuePtr->accept.pollFd = -1;
    queuePtr->accept.wakeFds[0] = queuePtr->accept.wakeFds[1] = -1;
    queuePtr->asks.pruneMark = PRUNE_MIN;
    queuePtr->accept.state = NOT_LISTENING;
    queuePtr->watch.freeWatched = -1;
    queuePtr->watch.watchPollFd = -1;
    for (i = 0; i < WATCH_KINDS; i++) {
	queuePtr->watch.firstWatched[i] = queuePtr->watch.lastWatched[i] = -1;
    }
    for (i = 0; i < OLD_QUEUES; i++) {
	queuePtr->asks.oldAskFds[i] = -1;
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
    PortState *queuePtr)
{
    /* Closed, but its accept thread may still be handing over. */
    FinishDraining(queuePtr);
    if (queuePtr->accept.state != NOT_LISTENING) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't open socket on port %d: this process is already "
		"listening on it", queuePtr->port));
	SetPortErrorCode(interp, "BUSY", queuePtr->port);
	return 1;
    }
    if (queuePtr->asks.askFds[0] < 0) {
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
    PortState **queuePtrPtr)
{
    PortState *queuePtr;
    int port;

    if (ParsePort(interp, objPtr, &port) != TCL_OK) {
	return TCL_ERROR;
    }
    pthread_mutex_lock(&queueLock);
    queuePtr = FindQueue(port);
    if (queuePtr == NULL || queuePtr->accept.state != LISTENING) {
	pthread_mutex_unlock(&queueLock);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"this process is not listening on port %d", port));
	SetPortErrorCode(interp, "NOTLISTENING", port);
	return TCL_ERROR;
    }
    queuePtr->accept.state = STOPPING;
    pthread_mutex_unlock(&queueLock);
    *queuePtrPtr = queuePtr;
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
 *	The listener is closed: new connections are refused. Those accepted
 *	and not handed over yet go to the next receivers that ask, here or
 *	in any worker (the accept thread drains them, then ends); watched
 *	ones are closed, and so are the queues of replaced programs (their
 *	workers' releases then close their connections). The queue stays: a
 *	later 'server port' resumes into it, with what is still pending then
 *	going first.
 *
 *----------------------------------------------------------------------
 */

static int
CloseCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    PortState *queuePtr;
    ssize_t written;
    int i;

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
    if (queuePtr->pending.numPending == 0) {
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
	for (i = 0; i < OLD_QUEUES; i++) {
	    if (queuePtr->asks.oldAskFds[i] >= 0) {
		ForgetOldQueue(queuePtr, i);
	    }
	}
	pthread_mutex_unlock(&queueLock);
	Tcl_ResetResult(interp);
	return TCL_OK;
    }
    queuePtr->accept.state = DRAINING;
    CloseFd(&queuePtr->accept.listenFd);
    pthread_mutex_unlock(&queueLock);
    do {
	written = write(queuePtr->accept.wakeFds[1], "x", 1);
    } while (written < 0 && errno == EINTR);
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
    Tcl_Obj *resultObj;
    PortState *queuePtr;
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

    if (ioctl(queuePtr->pending.readyFds[0], FIONREAD, &readyBytes) < 0) {
	readyBytes = 0;
    }

#define PUT(key, valueObj) \
    Tcl_DictObjPut(NULL, resultObj, Tcl_NewStringObj((key), -1), (valueObj))
    pthread_mutex_lock(&queueLock);
    PUT("port", Tcl_NewIntObj(queuePtr->port));
    PUT("myaddr", Tcl_NewStringObj(queuePtr->accept.myaddr, -1));
    PUT("listening", Tcl_NewBooleanObj(queuePtr->accept.state == LISTENING));
    PUT("accepted", Tcl_NewLongObj(queuePtr->counts.accepted));
    PUT("received", Tcl_NewLongObj(queuePtr->counts.received));
    PUT("requested", Tcl_NewBooleanObj(requested));
    PUT("waiting", Tcl_NewIntObj(queuePtr->asks.numAsks));
    PUT("queued", Tcl_NewIntObj(queuePtr->pending.numPending
	    + readyBytes / (int) sizeof(Message)));
    PUT("watching", Tcl_NewIntObj(queuePtr->watch.numWatched[WATCH_SILENT]
	    + queuePtr->watch.numWatched[WATCH_PARKED]));
    PUT("parked", Tcl_NewIntObj(queuePtr->watch.numWatched[WATCH_PARKED]));
    PUT("closed", Tcl_NewLongObj(queuePtr->counts.closed));
    PUT("watchlimit", Tcl_NewIntObj(queuePtr->watch.watchLimit));
    PUT("passed", Tcl_NewIntObj(queuePtr->counts.passed));
    PUT("ignored", Tcl_NewIntObj(queuePtr->counts.ignored));
    errno = queuePtr->accept.lastErrno;
    PUT("lasterror", Tcl_NewStringObj(errno ? Tcl_ErrnoId() : "", -1));
    pthread_mutex_unlock(&queueLock);
    PUT("workers", BoardObj(queuePtr));
#undef PUT
    Tcl_SetObjResult(interp, resultObj);
    return TCL_OK;
}

/*
 *======================================================================
 *
 * Upgrade and adoption --
 *
 *	'reexec' (the program replaced in place, keeping its listeners
 *	and pending connections), 'spawn' (a program started with the
 *	queues handed over), and the adoption of what was handed over
 *	when such a program loads the package (AdoptQueues).
 *
 *======================================================================
 */

/*
 *----------------------------------------------------------------------
 *
 * KeepAcrossExec --
 *
 *	queueLock held, 'reexec': makes every connection not handed over
 *	yet, pending or watched, and the reading ends of the queue and of
 *	those of replaced programs, stay open across an exec (keep 1), or no
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
    PortState *queuePtr,
    int keep)
{
    int i, kind, index, error = 0;

    for (i = 0; i < queuePtr->pending.numPending; i++) {
	if (fcntl(queuePtr->pending.list[i].fd, F_SETFD,
		keep ? 0 : FD_CLOEXEC) < 0
		&& error == 0) {
	    error = errno;
	}
    }
    for (kind = 0; kind < WATCH_KINDS; kind++) {
	for (index = queuePtr->watch.firstWatched[kind]; index >= 0;
		index = queuePtr->watch.entries[index].next) {
	    if (fcntl(queuePtr->watch.entries[index].fd, F_SETFD,
		    keep ? 0 : FD_CLOEXEC) < 0 && error == 0) {
		error = errno;
	    }
	}
    }
    for (i = -1; i < OLD_QUEUES; i++) {
	int fd = (i < 0) ? queuePtr->asks.askFds[0]
		: queuePtr->asks.oldAskFds[i];

	if (fd >= 0 && fcntl(fd, F_SETFD, keep ? 0 : FD_CLOEXEC) < 0
		&& error == 0) {
	    error = errno;
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
 *	it as "PORT FD list=LIST". The accept thread is stopped first;
 *	every connection it had accepted that no worker took yet (from the
 *	ready queue too) crosses the exec with the listener, its number in
 *	the file open as LIST (WritePassedList), and goes first in the new
 *	program. So does the queue's reading end (and those of the programs
 *	this one replaced, whose workers may still be there), listed as
 *	"qFD": the workers of now finish what they have, and what they
 *	release or give back after (or were sending at) the exec is the new
 *	program's to serve (ReadQueue); their next ask finds the serving
 *	process gone, and they leave. Signals with scripts are blocked
 *	across the exec, until the new program sets its own. Every other
 *	descriptor of the extension is close-on-exec.
 *
 * Results:
 *	Does not return on success. TCL_ERROR, POSIX, if the list could not
 *	be written or the exec failed: the process serves on as before.
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
    PortState *queuePtr;
    const char **argv;
    char value[3 * TCL_INTEGER_SPACE + 8];
    sigset_t scripted, oldMask;
    int port, listenFd, listFd, i, error;

    if (objc < 4) {
	Tcl_WrongNumArgs(interp, 2, objv, "port command ?arg ...?");
	return TCL_ERROR;
    }
    if (ClaimListening(interp, objv[2], &queuePtr) != TCL_OK) {
	return TCL_ERROR;
    }
    port = queuePtr->port;

    /*
     * From here on workers send what they release up the queue at once
     * (ReleaseCmd): the queue crosses the exec and the new program reads
     * it (ReadQueue), so a connection released after the exec is served
     * there, while one kept for the worker's own next request could keep
     * an old worker serving a fast client for ever.
     */

    __atomic_store_n(&TRAILER(queuePtr->board)->replaced, 1,
	    __ATOMIC_SEQ_CST);
    StopAccepting(queuePtr, &listenFd);

    /*
     * The connections accepted and not taken yet, those in the ready
     * queue too (they would go only to the workers of now, which may be
     * busy for long), cross the exec with the listener, to go first in
     * the new program. Ready to accept again on the same listener, with
     * them, if the exec does not happen (StartAccepting wants the state
     * LISTENING).
     */

    pthread_mutex_lock(&queueLock);
    DrainReady(queuePtr);
    listFd = WritePassedList(queuePtr, listenFd);
    error = (listFd < 0) ? errno : 0;
    queuePtr->accept.state = LISTENING;
    pthread_mutex_unlock(&queueLock);

    argv = (const char **) ckalloc((objc - 2) * sizeof(char *));
    for (i = 3; i < objc; i++) {
	argv[i - 3] = Tcl_GetString(objv[i]);
    }
    argv[objc - 3] = NULL;
    snprintf(value, sizeof(value), "%d %d list=%d", port, listenFd, listFd);
    Tcl_SetVar2(interp, "env", LISTENER_ENV, value, TCL_GLOBAL_ONLY);

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
    if (error == 0) {
	pthread_mutex_lock(&queueLock);
	error = KeepAcrossExec(queuePtr, 1);
	pthread_mutex_unlock(&queueLock);
	if (error == 0 && fcntl(listenFd, F_SETFD, 0) == 0
		&& fcntl(listFd, F_SETFD, 0) == 0) {
	    execvp(argv[0], (char *const *) argv);
	}
	if (error == 0) {
	    error = errno;
	}
	close(listFd);
    }
    pthread_sigmask(SIG_SETMASK, &oldMask, NULL);
    fcntl(listenFd, F_SETFD, FD_CLOEXEC);
    pthread_mutex_lock(&queueLock);
    KeepAcrossExec(queuePtr, 0);
    pthread_mutex_unlock(&queueLock);
    Tcl_UnsetVar2(interp, "env", LISTENER_ENV, TCL_GLOBAL_ONLY);
    ckfree((char *) argv);
    __atomic_store_n(&TRAILER(queuePtr->board)->replaced, 0,
	    __ATOMIC_SEQ_CST);
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
 * SendHandOver --
 *
 *	'spawn': queues on sock, for the program to adopt, every port's
 *	scoreboard, the asking end of its queue and the reading end of its
 *	ready queue (KIND_ADOPT_BOARD, KIND_ADOPT_ASK, KIND_ADOPT_READY),
 *	each message carrying nonce and the port's numeric address.
 *
 * Results:
 *	0, or the errno of the send that failed.
 *
 * Side effects:
 *	Takes and releases queueLock.
 *
 *----------------------------------------------------------------------
 */

static int
SendHandOver(
    int sock,
    uint64_t nonce)
{
    PortState *queuePtr;
    Message message;
    int error = 0;

    pthread_mutex_lock(&queueLock);
    for (queuePtr = firstQueuePtr; queuePtr != NULL && error == 0;
	    queuePtr = queuePtr->nextPtr) {
	memset(&message, 0, sizeof(message));
	message.magic = MESSAGE_MAGIC;
	message.kind = KIND_ADOPT_BOARD;
	message.port = queuePtr->port;
	message.sequence = nonce;
	/* Numeric, so it always fits; memset() left its terminator. */
	memcpy(&message.addr, queuePtr->accept.myaddr,
		strnlen(queuePtr->accept.myaddr, sizeof(message.addr) - 1));
	if (ancil_send_fd(sock, queuePtr->boardFd, &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	    break;
	}
	message.kind = KIND_ADOPT_ASK;
	if (ancil_send_fd(sock, queuePtr->asks.askFds[1], &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	    break;
	}
	message.kind = KIND_ADOPT_READY;
	if (ancil_send_fd(sock, queuePtr->pending.readyFds[0], &message,
		sizeof(message), MSG_DONTWAIT) < 0) {
	    error = errno;
	}
    }
    pthread_mutex_unlock(&queueLock);
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * StartSpawned --
 *
 *	'spawn': starts the program named by the argc words at wordv, its
 *	standard input in, its standard output and error out, with this
 *	process's environment and SPAWN_ENV naming this process, nonce and
 *	deathSignal (0: none).
 *
 * Results:
 *	As StartProgram: 0 with the program's pid in *pidPtr, or an errno
 *	value, *failedExecPtr saying whether the exec itself failed.
 *
 * Side effects:
 *	The program.
 *
 *----------------------------------------------------------------------
 */

static int
StartSpawned(
    Tcl_Obj *const wordv[],
    int argc,
    uint64_t nonce,
    int deathSignal,
    int in,
    int out,
    pid_t *pidPtr,
    int *failedExecPtr)
{
    Tcl_DString *words;
    char **argv, **envp;
    char token[sizeof(SPAWN_ENV) + 3 * TCL_INTEGER_SPACE + 3];
    int numEnv, i, j, error;

    /*
     * The words in the system's encoding, as 'exec' gives them; the
     * environment is this process's, with SPAWN_ENV (replacing one it may
     * have inherited).
     */

    words = (Tcl_DString *) ckalloc(argc * sizeof(Tcl_DString));
    argv = (char **) ckalloc((argc + 1) * sizeof(char *));
    for (i = 0; i < argc; i++) {
	argv[i] = Tcl_UtfToExternalDString(NULL, Tcl_GetString(wordv[i]),
		-1, &words[i]);
    }
    argv[argc] = NULL;
    for (numEnv = 0; environ[numEnv] != NULL; numEnv++) {
	/* Counting. */
    }
    envp = (char **) ckalloc((numEnv + 2) * sizeof(char *));
    for (i = j = 0; i < numEnv; i++) {
	if (strncmp(environ[i], SPAWN_ENV "=", sizeof(SPAWN_ENV)) != 0) {
	    envp[j++] = environ[i];
	}
    }
    snprintf(token, sizeof(token), SPAWN_ENV "=%ld %llu %d", (long) getpid(),
	    (unsigned long long) nonce, deathSignal);
    envp[j++] = token;
    envp[j] = NULL;

    error = StartProgram(argv, envp, in, out, pidPtr, failedExecPtr);
    for (i = 0; i < argc; i++) {
	Tcl_DStringFree(&words[i]);
    }
    ckfree((char *) words);
    ckfree((char *) argv);
    ckfree((char *) envp);
    return error;
}

/*
 *----------------------------------------------------------------------
 *
 * SpawnCmd --
 *
 *	$cmd spawn ?-parentdeath signal? command ?arg ...?
 *	Starts command as a new program (no shell; PATH searched as 'exec'
 *	does) that adopts the queues of every port this process knows when
 *	it loads the package. Every word reaches the program as one argument,
 *	whatever it looks like: none is read as 'exec' reads "<", ">", "2>",
 *	"|" or "&" (StartProgram, not Tcl_OpenCommandChannel, which has no
 *	quoting for them). With -parentdeath, the program gets signal if
 *	this process dies (Linux: PR_SET_PDEATHSIG, set when it adopts the
 *	queues, so even while it loads its code; elsewhere ignored). The
 *	hand-over travels on a fresh SOCK_SEQPACKET socketpair: every message
 *	is queued on it before the program exists, the sending end is
 *	closed, and the program gets the receiving end as its standard
 *	input; SPAWN_ENV, in the environment given to the program only,
 *	tells it that a hand-over waits and with which token. Every
 *	descriptor stays close-on-exec throughout, so a program another
 *	thread starts meanwhile inherits none; descriptors in flight are in
 *	no process's table. The program starts with every signal at its
 *	default action and none blocked.
 *
 * Results:
 *	TCL_OK with a readable channel carrying the program's standard
 *	output and error: Tcl's own command channel, as from 'open |command
 *	2>@1' ('pid' gives its process id, a blocking 'close' its exit
 *	status, a non-blocking one leaves it to Tcl to collect); or
 *	TCL_ERROR, POSIX, with no process left behind.
 *
 * Side effects:
 *	None but the program.
 *
 *----------------------------------------------------------------------
 */

static int
SpawnCmd(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Channel chan;
    Tcl_Pid *pidPtr;
    pid_t pid = 0;
    uint64_t nonce;
    int pair[2], output[2], error = 0;
    int deathSignal = 0, failedExec;
    int skip = (objc >= 3
	    && strcmp(Tcl_GetString(objv[2]), "-parentdeath") == 0) ? 2 : 0;

    if (objc < 3 + skip) {
	Tcl_WrongNumArgs(interp, 2, objv,
		"?-parentdeath signal? command ?arg ...?");
	return TCL_ERROR;
    }
    if (skip && ParseSignal(interp, objv[3], 0, &deathSignal) != TCL_OK) {
	return TCL_ERROR;
    }
    objc -= skip;
    objv += skip;
    if (CommandChannelMaker() == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't spawn \"%s\": this Tcl has no command channel to "
		"give (TclpCreateCommandChannel)", Tcl_GetString(objv[2])));
	Tcl_SetErrorCode(interp, "SOCKETSERVER", "SPAWN", NULL);
	return TCL_ERROR;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't spawn \"%s\": %s", Tcl_GetString(objv[2]),
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }
    nonce = MakeNonce(pair[0]);

    error = SendHandOver(pair[0], nonce);
    close(pair[0]);
    if (error != 0) {
	close(pair[1]);
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't hand the queues to \"%s\": %s",
		Tcl_GetString(objv[2]), Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    /*
     * The program's output. The ends it gets are moved above 2 if this
     * process had closed a standard descriptor: the dup2() of one onto
     * 0, 1 or 2 must not overwrite another.
     */

    output[0] = output[1] = -1;
    if (pipe2(output, O_CLOEXEC) < 0 || AboveStandard(&pair[1]) < 0
	    || AboveStandard(&output[1]) < 0) {
	error = errno;
	close(pair[1]);
	CloseFd(&output[0]);
	CloseFd(&output[1]);
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't spawn \"%s\": %s", Tcl_GetString(objv[2]),
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    error = StartSpawned(objv + 2, objc - 2, nonce, deathSignal, pair[1],
	    output[1], &pid, &failedExec);

    /*
     * The program has its copies; ours go, and with them the queued
     * hand-over if the program could not be started.
     */

    close(pair[1]);
    close(output[1]);
    if (error != 0) {
	close(output[0]);
	errno = error;
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("couldn't %s \"%s\": %s",
		failedExec ? "execute" : "spawn", Tcl_GetString(objv[2]),
		Tcl_PosixError(interp)));
	return TCL_ERROR;
    }

    /*
     * Tcl's command channel owns the pid (ckalloc()ed, freed with the
     * channel) and takes the descriptor as Tcl's TclFile: its number + 1.
     */

    pidPtr = (Tcl_Pid *) ckalloc(sizeof(Tcl_Pid));
    pidPtr[0] = (Tcl_Pid) (intptr_t) pid;
    chan = CommandChannelMaker()((void *) (intptr_t) (output[0] + 1), NULL,
	    NULL, 1, pidPtr);
    Tcl_RegisterChannel(interp, chan);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(Tcl_GetChannelName(chan), -1));
    return TCL_OK;
}

/*
 *----------------------------------------------------------------------
 *
 * AboveStandard --
 *
 *	Moves *fdPtr, if it is 0, 1 or 2 (this process closed a standard
 *	descriptor), to a new close-on-exec number above 2.
 *
 * Results:
 *	0, or -1 with errno set and *fdPtr unchanged.
 *
 * Side effects:
 *	The old number is closed.
 *
 *----------------------------------------------------------------------
 */

static int
AboveStandard(
    int *fdPtr)
{
    int fd;

    if (*fdPtr > 2) {
	return 0;
    }
    if ((fd = fcntl(*fdPtr, F_DUPFD_CLOEXEC, 3)) < 0) {
	return -1;
    }
    close(*fdPtr);
    *fdPtr = fd;
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * CloseAdopted --
 *
 *	Closes the descriptor 'server -fd' took over (the listener goes on
 *	as its copy above 2). A standard one (an inetd-style listener on
 *	standard input) gets /dev/null in its place instead, so that Tcl's
 *	standard channel never names whatever this process opens next.
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
CloseAdopted(
    int fd)
{
    int nullFd;

    if (fd <= 2 && (nullFd = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
	/* dup2() clears close-on-exec: a standard descriptor crosses exec. */
	if (dup2(nullFd, fd) < 0) {
	    close(fd);
	}
	close(nullFd);
	return;
    }
    close(fd);
}

/*
 *----------------------------------------------------------------------
 *
 * StartProgram --
 *
 *	Forks; the child runs argv (PATH searched, as execvp() does) with
 *	the environment envp, standard input in and standard output and
 *	error out (both above 2), every signal at its default action, those
 *	this process ignores too (PIPE under Tcl), and none blocked. A
 *	failed exec is reported on a close-on-exec pipe, so that the caller
 *	gets its errno, as Tcl's own exec does: posix_spawn() need not
 *	report it (it does not under valgrind, nor on some systems).
 *
 * Results:
 *	0 with the child's pid in *pidPtr; else an errno value, and
 *	*failedExecPtr 1 if the exec failed (the child is collected) or 0
 *	if no child was made.
 *
 * Side effects:
 *	The child. The fork handlers (AtForkChild) run in it.
 *
 *----------------------------------------------------------------------
 */

static int
StartProgram(
    char **argv,
    char **envp,
    int in,
    int out,
    pid_t *pidPtr,
    int *failedExecPtr)
{
    struct sigaction action;
    sigset_t none;
    ssize_t got;
    pid_t pid;
    int report[2], error, signo;

    *failedExecPtr = 0;
    if (pipe2(report, O_CLOEXEC) < 0) {
	return errno;
    }
    if (AboveStandard(&report[1]) < 0) {
	error = errno;
	close(report[0]);
	close(report[1]);
	return error;
    }
    pid = fork();
    if (pid == 0) {
	/*
	 * The child: only async-signal-safe calls until the exec. KILL,
	 * STOP and the C library's own signals refuse an action: no matter.
	 */

	memset(&action, 0, sizeof(action));
	action.sa_handler = SIG_DFL;
	for (signo = 1; signo < NSIG; signo++) {
	    sigaction(signo, &action, NULL);
	}
	sigemptyset(&none);
	if (dup2(in, 0) >= 0 && dup2(out, 1) >= 0 && dup2(out, 2) >= 0
		&& sigprocmask(SIG_SETMASK, &none, NULL) == 0) {
	    environ = envp;
	    execvp(argv[0], argv);
	}
	error = errno;
	while (write(report[1], &error, sizeof(error)) < 0 && errno == EINTR) {
	    /* Again. */
	}
	_exit(127);
    }
    error = errno;
    close(report[1]);
    if (pid < 0) {
	close(report[0]);
	return error;
    }

    /* End of file once the exec closed the child's end. */
    do {
	got = read(report[0], &error, sizeof(error));
    } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t) sizeof(error)) {
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
	    /* Again. */
	}
	*failedExecPtr = 1;
	return error;
    }
    *pidPtr = pid;
    return 0;
}

/*
 *----------------------------------------------------------------------
 *
 * CommandChannelMaker --
 *
 *	Tcl's own command channel (type "pipe", the one 'pid' and 'close'
 *	know) is made public only by Tcl_OpenCommandChannel, which reads its
 *	words as a pipeline. TclpCreateCommandChannel makes one for a
 *	process already started: it is slot 2 of Tcl's internal platform
 *	stubs on Unix and macOS, in Tcl 8.6 and 9 alike (TclIntPlatStubs
 *	below declares no more of the table than that).
 *
 * Results:
 *	TclpCreateCommandChannel, or NULL if this Tcl has no such table.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static CommandChannelProc *
CommandChannelMaker(void)
{
    const struct TclIntPlatStubs *stubsPtr = (tclStubsPtr->hooks == NULL)
	    ? NULL : tclStubsPtr->hooks->tclIntPlatStubs;

    if (stubsPtr == NULL || stubsPtr->magic != TCL_STUB_MAGIC) {
	return NULL;
    }
    return stubsPtr->createCommandChannel;
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
 * IsAdoptionMessage --
 *
 *	Checks one message of a hand-over (AdoptQueues): got bytes with fd,
 *	carrying the token nonce, for a port number that can be; each port
 *	comes as its scoreboard (a regular file of BOARD_BYTES), then its
 *	queue's asking end, then its ready queue's reading end (Unix
 *	SOCK_SEQPACKET sockets). askFd and boardFd are what this port has
 *	brought so far (-1: nothing).
 *
 * Results:
 *	1 if it is the message that comes next, else 0.
 *
 * Side effects:
 *	None.
 *
 *----------------------------------------------------------------------
 */

static int
IsAdoptionMessage(
    ssize_t got,
    int fd,
    const Message *messagePtr,
    uint64_t nonce,
    int askFd,
    int boardFd)
{
    struct stat info;

    if ((size_t) got != sizeof(Message) || messagePtr->magic != MESSAGE_MAGIC
	    || messagePtr->sequence != nonce || messagePtr->port > 65535) {
	return 0;
    }
    if (messagePtr->kind == KIND_ADOPT_BOARD) {
	return (boardFd < 0 && fstat(fd, &info) == 0
		&& S_ISREG(info.st_mode)
		&& info.st_size == (off_t) BOARD_BYTES);
    }
    return (IsQueueSocket(fd) && boardFd >= 0
	    && (messagePtr->kind == KIND_ADOPT_READY) == (askFd >= 0)
	    && (messagePtr->kind == KIND_ADOPT_ASK
		|| messagePtr->kind == KIND_ADOPT_READY));
}

/*
 *----------------------------------------------------------------------
 *
 * AddAdoptedQueue --
 *
 *	Adds the state of a port handed over whole (AdoptQueues): its
 *	scoreboard boardFd, its queue's asking end askFd and its ready
 *	queue's reading end readyFd, as a forked child has them (not
 *	listening, counters at 0), with the address in *messagePtr.
 *
 * Results:
 *	0, or an errno value (EBADMSG: this process knows the port already).
 *
 * Side effects:
 *	The three descriptors are the port's, or closed on failure.
 *
 *----------------------------------------------------------------------
 */

static int
AddAdoptedQueue(
    Message *messagePtr,
    int boardFd,
    int askFd,
    int readyFd)
{
    int askFds[2], readyFds[2];
    PortState *queuePtr;
    Slot *board = MapBoard(boardFd);
    int error = (board == NULL) ? errno : EBADMSG;

    askFds[0] = -1;
    askFds[1] = askFd;
    readyFds[0] = readyFd;
    readyFds[1] = -1;
    pthread_mutex_lock(&queueLock);
    if (board == NULL || FindQueue(messagePtr->port) != NULL) {
	pthread_mutex_unlock(&queueLock);
	if (board != NULL) {
	    munmap(board, BOARD_BYTES);
	}
	close(boardFd);
	close(askFd);
	close(readyFd);
	return error;
    }
    queuePtr = AddQueue(messagePtr->port, askFds, readyFds, boardFd, board);
    ((char *) &messagePtr->addr)[sizeof(messagePtr->addr) - 1] = '\0';
    snprintf(queuePtr->accept.myaddr, sizeof(queuePtr->accept.myaddr), "%s",
	    (char *) &messagePtr->addr);
    pthread_mutex_unlock(&queueLock);
    return 0;
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

	if (!IsAdoptionMessage(got, fd, &message, nonce, askFd, boardFd)) {
	    close(fd);
	    adoptError = EBADMSG;
	    break;
	}
	if (message.kind == KIND_ADOPT_BOARD) {
	    boardFd = fd;
	} else if (message.kind == KIND_ADOPT_ASK) {
	    askFd = fd;
	} else {
	    int error = AddAdoptedQueue(&message, boardFd, askFd, fd);

	    boardFd = askFd = -1;
	    if (error != 0) {
		adoptError = error;
		break;
	    }
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
 *======================================================================
 *
 * Process tools --
 *
 *	General process tools that know nothing of ports:
 *	::socketserver::signal, kill, exited, wait, descriptors, notify
 *	and runas.
 *
 *	Names they share with the rest of the file: signalLock and
 *	forkGeneration (taken and counted by the fork handlers),
 *	ForgetSignals (called by AtForkChild), ParseSignal (used by
 *	'spawn -parentdeath'), the commands that Socketserver_Init
 *	creates; and, from the rest, notifier.forkBreaks, processExiting,
 *	queueLock with KeepReserve (the reserve descriptor), CloseFd and
 *	ReplaceInChild.
 *
 *======================================================================
 */

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
 *	watched the first time, and freed when the thread ends
 *	(ForgetThreadSignals). The pipes of a forked child's parent are
 *	freed on the way (FreeWakePipe), but one of this thread that Tcl 9's
 *	notifier, shared with the parent, may still report: its file
 *	handler frees it when it runs (RunCaughtSignals).
 *
 * Results:
 *	The pipe, or NULL with a POSIX error in interp.
 *
 * Side effects:
 *	See above. The process keeps a reserve descriptor from then on
 *	(KeepReserve), which a forked child puts in place of its copy of the
 *	pipe.
 *
 *----------------------------------------------------------------------
 */

static WakePipe *
ThreadWakePipe(
    Tcl_Interp *interp)
{
    Tcl_ThreadId self = Tcl_GetCurrentThread();
    WakePipe *pipePtr, *nextPtr, *foundPtr = NULL;
    int fds[2];

    for (pipePtr = firstWakePipe; pipePtr != NULL; pipePtr = nextPtr) {
	nextPtr = pipePtr->nextPtr;
	if (pipePtr->generation != forkGeneration) {
	    if (pipePtr->thread != self || !notifier.forkBreaks) {
		FreeWakePipe(pipePtr);
	    }
	} else if (pipePtr->thread == self) {
	    foundPtr = pipePtr;
	}
    }
    if (foundPtr != NULL) {
	return foundPtr;
    }
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't create the signal pipe: %s", Tcl_PosixError(interp)));
	return NULL;
    }
    pthread_mutex_lock(&queueLock);
    KeepReserve();
    pthread_mutex_unlock(&queueLock);
    pipePtr = (WakePipe *) ckalloc(sizeof(WakePipe));
    pipePtr->thread = self;
    pipePtr->fds[0] = fds[0];
    pipePtr->fds[1] = fds[1];
    pipePtr->generation = forkGeneration;
    pipePtr->nextPtr = firstWakePipe;
    firstWakePipe = pipePtr;
    Tcl_CreateFileHandler(fds[0], TCL_READABLE, RunCaughtSignals, pipePtr);
    Tcl_CreateThreadExitHandler(ForgetThreadSignals, pipePtr);
    return pipePtr;
}

/*
 *----------------------------------------------------------------------
 *
 * FreeWakePipe --
 *
 *	signalLock held: unlinks a wake pipe and frees it. If it is the
 *	calling thread's, its file handler and thread exit handler go too;
 *	a stale pipe of another thread, one that does not exist in this
 *	forked child, has neither here.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	Closes what is open of the pipe in this process.
 *
 *----------------------------------------------------------------------
 */

static void
FreeWakePipe(
    WakePipe *pipePtr)
{
    WakePipe **linkPtr;

    for (linkPtr = &firstWakePipe; *linkPtr != pipePtr;
	    linkPtr = &(*linkPtr)->nextPtr) {
    }
    *linkPtr = pipePtr->nextPtr;
    if (pipePtr->thread == Tcl_GetCurrentThread()) {
	Tcl_DeleteFileHandler(pipePtr->fds[0]);
	Tcl_DeleteThreadExitHandler(ForgetThreadSignals, pipePtr);
    }
    CloseFd(&pipePtr->fds[0]);
    CloseFd(&pipePtr->fds[1]);
    ckfree((char *) pipePtr);
}

/*
 *----------------------------------------------------------------------
 *
 * ForgetThreadSignals --
 *
 *	Thread exit handler of a thread that has a wake pipe: removes the
 *	scripts it runs (their interpreters end with it, whether or not they
 *	were deleted: thread::exit leaves them) and frees its pipe, so that
 *	a later thread with the same id makes a pipe of its own, watched by
 *	its own event loop, and no signal writes to a closed pipe.
 *
 * Results:
 *	None.
 *
 * Side effects:
 *	The actions from before the scripts are back. A stale pipe (this
 *	thread forked) stays where Tcl 9's notifier, shared with the
 *	parent, may still report it. Nothing changes when the whole process
 *	exits (processExiting): its scripts keep catching their signals to
 *	the end.
 *
 *----------------------------------------------------------------------
 */

static void
ForgetThreadSignals(
    ClientData clientData)
{
    WakePipe *pipePtr = clientData;
    int signo, exiting;

    pthread_mutex_lock(&signalLock);
    pthread_mutex_lock(&queueLock);
    exiting = processExiting;
    pthread_mutex_unlock(&queueLock);
    if (exiting) {
	pthread_mutex_unlock(&signalLock);
	return;
    }
    for (signo = 1; signo < NSIG; signo++) {
	if (signalHandlers[signo] != NULL
		&& signalHandlers[signo]->thread == pipePtr->thread) {
	    RemoveSignalScript(signo);
	}
    }
    if (pipePtr->generation == forkGeneration || !notifier.forkBreaks) {
	FreeWakePipe(pipePtr);
    }
    pthread_mutex_unlock(&signalLock);
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
	/* Made by the parent of a fork; here fds[0] is its copy's place. */
	FreeWakePipe(pipePtr);
	pthread_mutex_unlock(&signalLock);
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
 *	ends by nullFd (a file handler may still watch the number; without
 *	nullFd the copy stays, which takes nothing from the parent) and
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
	    ReplaceInChild(pipePtr->fds[0], nullFd);
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
	    "bad signal \"%s\": must be one of %s (with or without SIG)",
	    Tcl_GetString(objPtr), Tcl_GetString(listObj)));
    if (!catchable) {
	Tcl_AppendPrintfToObj(Tcl_GetObjResult(interp),
		", or a number from 0 to %d", NSIG - 1);
    }
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
 *	and Tcl cannot read (CLOCK_MONOTONIC). Never blocks: a manager that
 *	stops reading fills its socket, and a process that waited for room
 *	(a supervisor pinging the watchdog) would stop for good; the message
 *	that does not fit is dropped instead, and said so.
 *
 * Results:
 *	TCL_OK with 1 if sent, 0 if NOTIFY_SOCKET is not set; or TCL_ERROR
 *	(POSIX EAGAIN: the manager's socket is full, the message dropped).
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
	    sent = sendto(fd, message, (size_t) length,
		    MSG_NOSIGNAL | MSG_DONTWAIT,
		    (struct sockaddr *) &address, addressLength);
	} while (sent < 0 && errno == EINTR);
	error = errno;
	close(fd);
	errno = error;
    }
    Tcl_DecrRefCount(messageObj);
    if (sent < 0) {
	int full = (errno == EAGAIN || errno == EWOULDBLOCK);

	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"couldn't notify the service manager at %s: %s%s", path,
		Tcl_PosixError(interp), full ? " (its socket is full: it "
		"reads no more; the message is dropped)" : ""));
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
