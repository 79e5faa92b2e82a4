/* The connection to Redis: one redis_conn at a time (TCP, TLS or a unix
 * socket, on the loop), reconnecting with capped exponential
 * backoff and jitter, asking the Sentinels where the master is when there
 * are any.
 *
 * Every connection is made fit before anything is sent on it: the
 * handshake (AUTH, SELECT, ROLE behind Sentinel, and the checks of the
 * server: its version, its eviction policy) is this module's concern;
 * what is sent once it is done, and what its replies mean, is the client's
 * (counter.h). The client sends preformatted commands with a tag, and gets
 * each reply with its tag, in order; when a connection breaks, every reply
 * it still owed comes as NULL, then on_down. A command that gets no reply
 * within REDIS_TIMEOUT_MS drops the connection the same way. */
#ifndef GRACEFULD_REDIS_LINK_H
#define GRACEFULD_REDIS_LINK_H

#include <stdbool.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "redis/redis_tls.h"
#include "redis/redis_url.h"

enum redis_link_state {
  LINK_IDLE,       /* not started, or waiting out a backoff */
  LINK_RESOLVING,  /* uv_getaddrinfo in progress */
  LINK_CONNECTING, /* TCP or unix socket connect in progress */
  LINK_ASKING,     /* connected to a Sentinel (or a cluster seed), the
                      master's address (the slot's owner) asked */
  LINK_ASKED,      /* the address is known; the Sentinel connection closes
                      and the master is connected to next */
  LINK_HANDSHAKE,  /* AUTH / SELECT / ROLE / INFO / CONFIG GET sent, replies
                      awaited */
  LINK_READY,      /* authenticated, database selected: due work goes out */
  LINK_RETIRING,   /* a transient error reply: no more sends; closed and
                      reconnected once the last reply is in */
  LINK_CLOSED,     /* redis_link_close was called */
};

struct redis_link;

/* What a key must hold, or be absent, for the client to count on it. */
enum redis_key_kind {
  REDIS_KEY_INTEGER, /* a string INCRBY can count on */
  REDIS_KEY_HASH,
  REDIS_KEY_ZSET,
};

struct redis_key_check {
  const char *key;
  enum redis_key_kind kind;
};

#define REDIS_LINK_CHECKS_MAX 8

/* The link's own counts, which /metrics reads. */
struct redis_link_stats {
  uint64_t reconnects; /* connections made after the first */
  uint64_t asks;       /* ASK redirects followed (Redis Cluster) */
};

/* Where the link connects and how; its owner builds them from its
 * settings. The strings and the Sentinel list are borrowed: they must
 * outlive the link. */
struct redis_link_options {
  /* Where to connect and how to log in. Behind Sentinel, the master's
   * credentials and database, and the first guess of its address. */
  struct redis_target target;
  /* n_sentinels > 0: the master's address is asked of these, in turn. */
  const struct redis_sentinel *sentinels;
  size_t n_sentinels;
  const char *master_name; /* the master's name in Sentinel */
  /* n_cluster_nodes > 0 (and no Sentinels): Redis Cluster; these seeds are
   * asked in turn for the slot map, and the owner of slot (every key the
   * client uses hashes to it) is connected to. */
  const struct redis_sentinel *cluster_nodes;
  size_t n_cluster_nodes;
  uint16_t slot;
  const char *sentinel_password; /* NULL: the Sentinels want none */
  /* Where the passwords came from (NULL: nowhere), read again at every
   * connection: a password rotated in place (a Secret volume) is used from
   * the next connection on. */
  const char *password_file;
  const char *sentinel_password_file;
  /* Every this many ms a ready connection sends AUTH again, with the
   * password as last read (a token that expires); 0: never. */
  uint64_t reauth_ms;
  /* Bounds a connect with its handshake, and how long a command may go
   * unanswered. */
  uint64_t timeout_ms;
  /* TLS to Redis and the Sentinels (NULL: plain text); borrowed. */
  const struct redis_tls *tls;
  /* A maxmemory-policy of allkeys-*: never ready (else one warning). */
  bool refuse_allkeys_eviction;
};

/* What the link tells its client. */
struct redis_link_client {
  /* A connection is ready: authenticated, database selected. */
  void (*on_ready)(struct redis_link *link);
  /* The reply to the command sent with tag; NULL: lost with its
   * connection. */
  void (*on_reply)(struct redis_link *link, uint64_t tag,
                   const redisReply *reply);
  /* The ready connection is gone; every reply it owed has come as NULL. */
  void (*on_down)(struct redis_link *link);
};

struct redis_link {
  uv_loop_t *loop;
  struct redis_link_options opts; /* as given to redis_link_init */
  struct redis_link_stats stats;
  struct redis_conn *conn; /* the connection being made or in use */
  enum redis_link_state state;
  uv_timer_t timer; /* backoff, connect timeout or reply watchdog */
  uv_timer_t reauth_timer;
  uv_getaddrinfo_t resolver;
  uint64_t in_flight;      /* commands sent, reply not yet read */
  uint64_t last_progress;  /* uv_now of the last reply (or first send) */
  uint64_t down_since;     /* uv_now when the link was last lost */
  unsigned failures;       /* consecutive failed attempts */
  unsigned handshake_left; /* handshake replies still awaited */
  bool ever_ready;         /* a handshake has completed once */
  bool down_logged;
  bool auth_failed_logged; /* since the last successful handshake */
  bool auth_unneeded_logged;
  /* What the handshake's checks last logged, so that each says it once
   * per change, not at every reconnect. */
  char checked_version[32];
  char checked_policy[32];
  char checked_keys[128];
  /* The Sentinels' password as last read (options.sentinel_password, then
   * its file); the master's is in target. */
  char sentinel_password[REDIS_PASSWORD_MAX];
  bool has_sentinel_password;
  bool password_unreadable_logged;
  bool sentinel_password_unreadable_logged;
  /* The client's keys (redis_link_set_checks), checked at every handshake;
   * the tags tell a TYPE's reply from a GET's. */
  struct redis_key_check checks[REDIS_LINK_CHECKS_MAX];
  size_t n_checks;
  char type_tags[REDIS_LINK_CHECKS_MAX];
  char get_tags[REDIS_LINK_CHECKS_MAX];
  /* The client's probe of its commands (redis_link_set_probe); NULL:
   * none. */
  char *probe;
  size_t probe_len;
  char checked_commands[4];
  bool retiring_logged; /* since the last reply to due work that counted */
  /* Redis Cluster: an ASK names the node importing the slot (ask_ip,
   * ask_port). The next connection goes there, once, and sends ASKING
   * before every script it may run there (redis_slot_asking_safe); after
   * it, the seeds are asked again. */
  bool ask_next; /* the next connection follows an ASK */
  bool ask_mode; /* the connection in use follows one */
  char ask_ip[64];
  uint16_t ask_port;
  /* Sentinel: the master's address, when known, is in target; the
   * Sentinel asked next is sentinels[sentinel]. */
  bool master_known;
  bool asking; /* the connection being made is to a Sentinel */
  size_t sentinel;
  struct redis_target target; /* where the next connection goes, and how it
                                 logs in: opts.target, or the master */
  const char *host;           /* of the connection being made: target's or a
                                 Sentinel's */
  uint16_t port;
  uint32_t rng;
  const struct redis_link_client *client;
  char addr[REDIS_HOST_MAX + REDIS_USER_MAX + 64]; /* as logged: no password */
  /* The server of the last connection made (host:port, or a socket's path,
   * "" before the first) and how it is carried: "tcp", "tls" or "unix";
   * what /metrics and the logs name. */
  char node[REDIS_HOST_MAX + 8];
  const char *transport;
  char why[256]; /* why the current connection is being dropped */
};

/* Prepares the link (no connection yet). *opts is copied; what it points
 * to, and client, must outlive the link. */
void redis_link_init(struct redis_link *link, uv_loop_t *loop,
                     const struct redis_link_options *opts,
                     const struct redis_link_client *client);

/* Starts connecting; the link keeps itself connected from then on. */
void redis_link_start(struct redis_link *link);

/* The keys the client counts on, checked at every handshake with plain
 * reads (TYPE, and GET of the counter; nothing a CLIENT PAUSE WRITE holds
 * back): a connection that finds one of the wrong kind is not used (said
 * once, naming the key, as redis_keys_unusable) and is tried again after a
 * backoff. The names are copied. Returns 0, UV_EINVAL (too many) or
 * UV_ENOMEM. */
int redis_link_set_checks(struct redis_link *link,
                          const struct redis_key_check *checks, size_t n);

/* The client's probe of the commands it needs (a script in Redis protocol
 * form, copied), the last step of every handshake: OK, or a NOPERM naming
 * a command the user may not run, which keeps the connection from being
 * used as a key check does; any other error (a server too old to run it)
 * is said once as a check skipped. Returns 0 or UV_ENOMEM. */
int redis_link_set_probe(struct redis_link *link, const char *cmd, size_t len);

/* Queues cmd (len bytes, Redis protocol; copied) on the ready connection;
 * its reply comes to the client's on_reply with tag. Returns 0, or
 * UV_ENOTCONN when no connection is ready (nothing queued), UV_ENOMEM. */
int redis_link_send(struct redis_link *link, const char *cmd, size_t len,
                    uint64_t tag);

/* An error reply that a fresh connection may not get: this one takes no
 * more commands, and is replaced once its last reply is in. why is logged
 * (once until a command succeeds again). */
void redis_link_retire(struct redis_link *link, const char *why, size_t len);

/* True while the link is ready: connected, authenticated, database
 * selected. */
bool redis_link_connected(const struct redis_link *link);

/* Drops the connection and closes the link's handles; replies still owed
 * are given up. No callback is called after this. */
void redis_link_close(struct redis_link *link);

#endif
