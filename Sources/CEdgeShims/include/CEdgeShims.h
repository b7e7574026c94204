#ifndef EDGE_SHIMS_H
#define EDGE_SHIMS_H
/*
 * Non-inline wrappers for OpenSSL 3 macros that Swift cannot import, and the
 * SSL_OP_* constants whose macro definitions are too complex for the importer.
 * This module holds no logic: every function forwards to one OpenSSL call.
 */
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/ocsp.h>
#include <stdint.h>

static const uint64_t EDGE_SSL_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;
static const uint64_t EDGE_SSL_OP_NO_COMPRESSION = SSL_OP_NO_COMPRESSION;
static const uint64_t EDGE_SSL_OP_CIPHER_SERVER_PREFERENCE = SSL_OP_CIPHER_SERVER_PREFERENCE;
static const uint64_t EDGE_SSL_OP_NO_TICKET = SSL_OP_NO_TICKET;
static const uint64_t EDGE_SSL_OP_NO_SSLv3 = SSL_OP_NO_SSLv3;
static const uint64_t EDGE_SSL_OP_NO_TLSv1 = SSL_OP_NO_TLSv1;
static const uint64_t EDGE_SSL_OP_NO_TLSv1_1 = SSL_OP_NO_TLSv1_1;
static const uint64_t EDGE_SSL_OP_IGNORE_UNEXPECTED_EOF = SSL_OP_IGNORE_UNEXPECTED_EOF;

static const unsigned long EDGE_XN_FLAG_RFC2253 = XN_FLAG_RFC2253;

typedef int (*edge_servername_cb)(SSL *ssl, int *alert, void *arg);

void edge_SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, edge_servername_cb cb);
void edge_SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg);
int edge_SSL_set_tlsext_host_name(SSL *ssl, const char *name);
int edge_SSL_set1_sigalgs_list(SSL *ssl, const char *list);
int edge_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int edge_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
long edge_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
long edge_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
long edge_SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long size);
int edge_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list);
int edge_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *cert);
void edge_OPENSSL_free(void *ptr);

int edge_sk_X509_num(const STACK_OF(X509) *stack);
X509 *edge_sk_X509_value(const STACK_OF(X509) *stack, int index);
STACK_OF(X509) *edge_sk_X509_new_null(void);
int edge_sk_X509_push(STACK_OF(X509) *stack, X509 *cert);
void edge_sk_X509_free(STACK_OF(X509) *stack);
/// Entries of a CRL (for its count on the status views).
int edge_sk_X509_REVOKED_num(const STACK_OF(X509_REVOKED) *stack);

void edge_BIO_set_retry_read(BIO *bio);
void edge_BIO_clear_retry_flags(BIO *bio);

int edge_sk_GENERAL_NAME_num(const GENERAL_NAMES *names);
const GENERAL_NAME *edge_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int index);

/* OCSP stapling: the status callback and the response it hands OpenSSL. */
typedef int (*edge_status_cb)(SSL *ssl, void *arg);
void edge_SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, edge_status_cb cb);
void edge_SSL_CTX_set_tlsext_status_arg(SSL_CTX *ctx, void *arg);
long edge_SSL_set_tlsext_status_ocsp_resp(SSL *ssl, unsigned char *response, long length);
void *edge_OPENSSL_malloc(size_t length);
/* The client side (certs --check-served): ask for a stapled response and read it. */
long edge_SSL_set_tlsext_status_type(SSL *ssl, int type);
long edge_SSL_get_tlsext_status_ocsp_resp(SSL *ssl, const unsigned char **response);
/* The OCSP URLs of a certificate's AIA (X509_get1_ocsp). */
int edge_sk_OPENSSL_STRING_num(const STACK_OF(OPENSSL_STRING) *stack);
const char *edge_sk_OPENSSL_STRING_value(const STACK_OF(OPENSSL_STRING) *stack, int index);
/* The TLS Feature extension's values (must-staple is status_request, 5). */
int edge_sk_ASN1_INTEGER_num(const STACK_OF(ASN1_INTEGER) *stack);
const ASN1_INTEGER *edge_sk_ASN1_INTEGER_value(const STACK_OF(ASN1_INTEGER) *stack, int index);
void edge_sk_ASN1_INTEGER_pop_free(STACK_OF(ASN1_INTEGER) *stack);

#endif
