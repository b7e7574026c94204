#ifndef EDGE_SOCKET_SHIMS_H
#define EDGE_SOCKET_SHIMS_H
/*
 * The ancillary-data (cmsg) macros of <sys/socket.h>, as functions Swift can call.
 * No logic: each function is one macro. Used to hand listening sockets to a new
 * gateway process over a Unix socket (SCM_RIGHTS). The header only forward-declares
 * the structs so that <sys/socket.h> stays owned by the system module. Also glibc's
 * malloc_trim and malloc_info, which the Glibc module does not export.
 */
#include <stddef.h>

struct msghdr;
struct cmsghdr;

size_t edge_CMSG_SPACE(size_t length);
size_t edge_CMSG_LEN(size_t length);
struct cmsghdr *edge_CMSG_FIRSTHDR(struct msghdr *message);
unsigned char *edge_CMSG_DATA(struct cmsghdr *header);
int edge_SCM_RIGHTS(void);
/* SO_PEERCRED (needs _GNU_SOURCE); getsockopt fills a struct ucred: pid, uid, gid. */
int edge_SO_PEERCRED(void);

/* glibc's malloc_trim (<malloc.h>, which Swift's Glibc module does not export). */
int edge_malloc_trim(size_t pad);
/* glibc's malloc_info into `stream` (a FILE *): the heap of every arena, as XML (tests). */
int edge_malloc_info(void *stream);

#endif
