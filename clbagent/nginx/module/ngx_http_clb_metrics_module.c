/*
 * The values the L7 metrics count, handed to the Lua log phase as numbers (clb.metrics, through
 * LuaJIT's FFI; docs/metrics.md). Reading them as nginx variables would make nginx format each as
 * text and Lua parse it again, which cost more than the counting itself.
 *
 * The module has no directives, no configuration and no state: loading it only makes the
 * function below reachable (nginx loads modules with RTLD_GLOBAL).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* The order of out[] (clb.metrics reads it in this order). */
enum {
    CLB_REQUEST_LENGTH,     /* $request_length */
    CLB_BYTES_SENT,         /* $bytes_sent */
    CLB_CONN_REQUESTS,      /* $connection_requests */
    CLB_HEADER_TIME,        /* the last try's $upstream_header_time in ms, -1: none */
    CLB_RESPONSE_TIME,      /* the last try's $upstream_response_time in ms, -1: none */
    CLB_NVALUES
};


int clb_metrics_values(ngx_http_request_t *r, double *out, u_char **addr,
    size_t *addr_len, ngx_int_t scope_index, u_char **scope, size_t *scope_len);
ngx_int_t clb_metrics_variable_index(ngx_http_request_t *r, u_char *name,
    size_t len);


/*
 * Fills out[CLB_NVALUES], *addr and *addr_len (the last try's peer name, NULL when there is none)
 * and *scope, *scope_len (the value of the indexed variable scope_index; length 0 when it has
 * none). Returns CLB_NVALUES, or 0 when the scope could not be read.
 *
 * The upstream values follow nginx's $upstream_*_time and $upstream_addr for the last value
 * they print: r->upstream_states holds one state per try, and a state without a peer separates
 * the tries of an internal redirect's next upstream (" : "). A last state without a peer means
 * that upstream made no try (no time, no address). A time nginx never set is -1 ("-": no
 * response header from a backend); a time is never negative otherwise (as nginx prints it).
 */
int
clb_metrics_values(ngx_http_request_t *r, double *out, u_char **addr,
    size_t *addr_len, ngx_int_t scope_index, u_char **scope, size_t *scope_len)
{
    ngx_msec_int_t              ms;
    ngx_http_variable_value_t  *v;
    ngx_http_upstream_state_t  *state;

    out[CLB_REQUEST_LENGTH] = (double) r->request_length;
    out[CLB_BYTES_SENT] = (double) r->connection->sent;
    out[CLB_CONN_REQUESTS] = (double) r->connection->requests;
    out[CLB_HEADER_TIME] = -1;
    out[CLB_RESPONSE_TIME] = -1;
    *addr = NULL;
    *addr_len = 0;

    if (r->upstream_states != NULL && r->upstream_states->nelts > 0) {
        state = r->upstream_states->elts;
        state += r->upstream_states->nelts - 1;

        if (state->peer != NULL || r->upstream_states->nelts == 1) {
            ms = (ngx_msec_int_t) state->header_time;
            out[CLB_HEADER_TIME] = ms == -1 ? -1 : (double) ngx_max(ms, 0);
            ms = (ngx_msec_int_t) state->response_time;
            out[CLB_RESPONSE_TIME] = ms == -1 ? -1 : (double) ngx_max(ms, 0);

            if (state->peer != NULL) {
                *addr = state->peer->data;
                *addr_len = state->peer->len;
            }
        }
    }

    v = ngx_http_get_indexed_variable(r, (ngx_uint_t) scope_index);
    if (v == NULL) {
        return 0;
    }

    if (v->not_found) {
        *scope = NULL;
        *scope_len = 0;

    } else {
        *scope = v->data;
        *scope_len = v->len;
    }

    return CLB_NVALUES;
}


/*
 * The index of the indexed variable "name" (lowercase), for clb_metrics_values; -1 when the
 * configuration has no such indexed variable. Looked up once per worker by the Lua side.
 */
ngx_int_t
clb_metrics_variable_index(ngx_http_request_t *r, u_char *name, size_t len)
{
    ngx_http_variable_t        *v;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);

    v = ngx_hash_find(&cmcf->variables_hash, ngx_hash_key(name, len), name, len);
    if (v == NULL || !(v->flags & NGX_HTTP_VAR_INDEXED)) {
        return -1;
    }

    return (ngx_int_t) v->index;
}


static ngx_http_module_t  ngx_http_clb_metrics_module_ctx = {
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
};


ngx_module_t  ngx_http_clb_metrics_module = {
    NGX_MODULE_V1,
    &ngx_http_clb_metrics_module_ctx,
    NULL,                                  /* no directives */
    NGX_HTTP_MODULE,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NGX_MODULE_V1_PADDING
};
