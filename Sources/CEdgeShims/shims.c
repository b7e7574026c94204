#include "CEdgeShims.h"

void edge_SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, edge_servername_cb cb) {
    SSL_CTX_set_tlsext_servername_callback(ctx, cb);
}
void edge_SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg) {
    SSL_CTX_set_tlsext_servername_arg(ctx, arg);
}
int edge_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

int edge_SSL_set1_sigalgs_list(SSL *ssl, const char *list) {
    return (int)SSL_set1_sigalgs_list(ssl, list);
}
int edge_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}
int edge_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
long edge_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
long edge_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
long edge_SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long size) {
    return SSL_CTX_sess_set_cache_size(ctx, size);
}
int edge_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}
int edge_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *cert) {
    return (int)SSL_CTX_add1_chain_cert(ctx, cert);
}
void edge_OPENSSL_free(void *ptr) {
    OPENSSL_free(ptr);
}
int edge_sk_X509_REVOKED_num(const STACK_OF(X509_REVOKED) *stack) {
    return sk_X509_REVOKED_num(stack);
}
int edge_sk_X509_num(const STACK_OF(X509) *stack) {
    return sk_X509_num(stack);
}
X509 *edge_sk_X509_value(const STACK_OF(X509) *stack, int index) {
    return sk_X509_value(stack, index);
}
STACK_OF(X509) *edge_sk_X509_new_null(void) {
    return sk_X509_new_null();
}
int edge_sk_X509_push(STACK_OF(X509) *stack, X509 *cert) {
    return sk_X509_push(stack, cert);
}
void edge_sk_X509_free(STACK_OF(X509) *stack) {
    sk_X509_free(stack);
}
int edge_sk_GENERAL_NAME_num(const GENERAL_NAMES *names) {
    return sk_GENERAL_NAME_num(names);
}
const GENERAL_NAME *edge_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int index) {
    return sk_GENERAL_NAME_value(names, index);
}

void edge_BIO_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}

void edge_BIO_clear_retry_flags(BIO *bio) {
    BIO_clear_retry_flags(bio);
}

void edge_SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, edge_status_cb cb) {
    SSL_CTX_set_tlsext_status_cb(ctx, cb);
}
void edge_SSL_CTX_set_tlsext_status_arg(SSL_CTX *ctx, void *arg) {
    SSL_CTX_set_tlsext_status_arg(ctx, arg);
}
long edge_SSL_set_tlsext_status_ocsp_resp(SSL *ssl, unsigned char *response, long length) {
    return SSL_set_tlsext_status_ocsp_resp(ssl, response, length);
}
long edge_SSL_set_tlsext_status_type(SSL *ssl, int type) {
    return SSL_set_tlsext_status_type(ssl, type);
}
long edge_SSL_get_tlsext_status_ocsp_resp(SSL *ssl, const unsigned char **response) {
    return SSL_get_tlsext_status_ocsp_resp(ssl, response);
}
void *edge_OPENSSL_malloc(size_t length) {
    return OPENSSL_malloc(length);
}
int edge_sk_OPENSSL_STRING_num(const STACK_OF(OPENSSL_STRING) *stack) {
    return sk_OPENSSL_STRING_num(stack);
}
const char *edge_sk_OPENSSL_STRING_value(const STACK_OF(OPENSSL_STRING) *stack, int index) {
    return sk_OPENSSL_STRING_value(stack, index);
}
int edge_sk_ASN1_INTEGER_num(const STACK_OF(ASN1_INTEGER) *stack) {
    return sk_ASN1_INTEGER_num(stack);
}
const ASN1_INTEGER *edge_sk_ASN1_INTEGER_value(const STACK_OF(ASN1_INTEGER) *stack, int index) {
    return sk_ASN1_INTEGER_value(stack, index);
}
void edge_sk_ASN1_INTEGER_pop_free(STACK_OF(ASN1_INTEGER) *stack) {
    sk_ASN1_INTEGER_pop_free(stack, ASN1_INTEGER_free);
}
