#define _GNU_SOURCE
#include <malloc.h>
#include <sys/socket.h>
#include "CSocketShims.h"

size_t edge_CMSG_SPACE(size_t length) { return CMSG_SPACE(length); }
size_t edge_CMSG_LEN(size_t length) { return CMSG_LEN(length); }
struct cmsghdr *edge_CMSG_FIRSTHDR(struct msghdr *message) { return CMSG_FIRSTHDR(message); }
unsigned char *edge_CMSG_DATA(struct cmsghdr *header) { return CMSG_DATA(header); }
int edge_SCM_RIGHTS(void) { return SCM_RIGHTS; }
int edge_SO_PEERCRED(void) { return SO_PEERCRED; }

int edge_malloc_trim(size_t pad) { return malloc_trim(pad); }
int edge_malloc_info(void *stream) { return malloc_info(0, (FILE *)stream); }
