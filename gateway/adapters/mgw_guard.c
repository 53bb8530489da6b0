/* mgw_guard: the fleet's authorisation for mosquitto 2.0, as a broker plugin.
 *
 * Identity is the client certificate's common name (CN), never what the client
 * says. Built and configured by gateway/adapters/mosquitto.py; the rules are
 * documented in docs/security.md ("Broker authorisation") and mirrored for EMQX
 * by gateway/cloud/broker/emqx.py.
 *
 *  - CONNECT: the client id must be the CN, or the CN followed by ':' and a
 *    lowercase role (a box's "<box>:telemetry"); otherwise the CONNECT is
 *    refused before the broker looks up an existing session, so nobody can
 *    take over another client's session. A certificate whose serial is in the
 *    CRL is refused. The MQTT username becomes the CN.
 *  - SUBSCRIBE, PUBLISH, delivery: a box (CN without '.') subscribes only to its
 *    own ack topics, literally (no wildcard, no $share), writes only its own
 *    chunk, telemetry and worklist status topics and reads only its own acks and
 *    its own worklist. "cloud.ingest.*" subscribes only to the shared chunk
 *    subscription and writes acks; "cloud.fleet.*" reads telemetry and worklist
 *    status, and writes exam-record acks, worklists and worklist status acks.
 *    Anything else is denied.
 *  - Revocation: the CRL file is re-read within CRL_POLL_S of a change; every
 *    open connection whose certificate serial it lists is disconnected, and
 *    any packet from such a connection is refused meanwhile.
 *
 * Options: plugin_opt_prefix (topic prefix, e.g. mgw/v1), plugin_opt_crl_file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define CRL_POLL_S 1
#define MAX_CN 64
#define MAX_TOPIC 512

struct seen {  /* the certificate serial behind each client id, as of its last CONNECT */
    char *client_id;
    ASN1_INTEGER *serial;
    struct seen *next;
};

static mosquitto_plugin_id_t *plugin_id;
static char prefix[128];
static char *crl_file;
static X509_CRL *crl;
static struct timespec crl_mtime;
static off_t crl_size;
static time_t next_poll;
static struct seen *seen;

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    (void)supported_version_count;
    (void)supported_versions;
    return 5;
}

static int revoked(const ASN1_INTEGER *serial)
{
    X509_REVOKED *entry = NULL;
    return crl != NULL && serial != NULL && X509_CRL_get0_by_serial(crl, &entry, (ASN1_INTEGER *)serial) == 1;
}

static void load_crl(void)
{
    struct stat st;
    FILE *fh;
    X509_CRL *fresh;

    if(crl_file == NULL || stat(crl_file, &st) != 0) return;
    if(crl != NULL && st.st_mtim.tv_sec == crl_mtime.tv_sec && st.st_mtim.tv_nsec == crl_mtime.tv_nsec
            && st.st_size == crl_size) return;
    fh = fopen(crl_file, "r");
    if(fh == NULL) return;
    fresh = PEM_read_X509_CRL(fh, NULL, NULL, NULL);
    fclose(fh);
    if(fresh == NULL){  /* half-written or damaged: keep the last good one, try again next poll */
        mosquitto_log_printf(MOSQ_LOG_WARNING, "mgw_guard: cannot parse CRL %s; keeping the previous one", crl_file);
        return;
    }
    if(crl != NULL) X509_CRL_free(crl);
    crl = fresh;
    crl_mtime = st.st_mtim;
    crl_size = st.st_size;
    for(struct seen *s = seen; s != NULL; s = s->next){
        if(s->serial != NULL && revoked(s->serial)){
            mosquitto_log_printf(MOSQ_LOG_NOTICE, "mgw_guard: disconnecting %s: its certificate is revoked", s->client_id);
            mosquitto_kick_client_by_clientid(s->client_id, false);
            ASN1_INTEGER_free(s->serial);
            s->serial = NULL;
        }
    }
}

static void remember(const char *client_id, const ASN1_INTEGER *serial)
{
    struct seen *s;
    for(s = seen; s != NULL; s = s->next){
        if(strcmp(s->client_id, client_id) == 0) break;
    }
    if(s == NULL){
        s = calloc(1, sizeof(*s));
        if(s == NULL) return;
        s->client_id = strdup(client_id);
        if(s->client_id == NULL){ free(s); return; }
        s->next = seen;
        seen = s;
    }
    if(s->serial != NULL) ASN1_INTEGER_free(s->serial);
    s->serial = ASN1_INTEGER_dup(serial);
}

/* The CN of the client's certificate into out; the serial into *serial (caller frees). 0 on success. */
static int identity(struct mosquitto *client, char *out, size_t size, ASN1_INTEGER **serial)
{
    X509 *cert = mosquitto_client_certificate(client);
    int len;
    if(cert == NULL) return -1;
    len = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)size);
    if(serial != NULL) *serial = ASN1_INTEGER_dup(X509_get_serialNumber(cert));
    X509_free(cert);
    if(len <= 0 || (size_t)len >= size || strlen(out) != (size_t)len) return -1;
    return 0;
}

static int client_id_allowed(const char *cn, const char *client_id)
{
    size_t n = strlen(cn);
    const char *role;
    if(strncmp(client_id, cn, n) != 0) return 0;
    if(client_id[n] == '\0') return 1;
    if(client_id[n] != ':' || client_id[n + 1] == '\0') return 0;
    for(role = client_id + n + 1; *role; role++){
        if(*role < 'a' || *role > 'z') return 0;
    }
    return role - (client_id + n + 1) <= 16;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_basic_auth *ed = event_data;
    const char *client_id = mosquitto_client_id(ed->client);
    char cn[MAX_CN + 1];
    ASN1_INTEGER *serial = NULL;
    int rc = MOSQ_ERR_AUTH;
    (void)event;
    (void)userdata;

    load_crl();
    if(client_id == NULL || identity(ed->client, cn, sizeof(cn), &serial) != 0){
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mgw_guard: refused a client without a usable certificate identity");
    }else if(revoked(serial)){
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mgw_guard: refused %s: its certificate is revoked", cn);
    }else if(!client_id_allowed(cn, client_id)){
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mgw_guard: refused certificate %s connecting as client id %s", cn, client_id);
    }else if(mosquitto_set_username(ed->client, cn) == MOSQ_ERR_SUCCESS){
        remember(client_id, serial);
        rc = MOSQ_ERR_SUCCESS;
    }
    if(serial != NULL) ASN1_INTEGER_free(serial);
    return rc;
}

static int matches(const char *filter, const char *topic)
{
    bool result = false;
    return mosquitto_topic_matches_sub(filter, topic, &result) == MOSQ_ERR_SUCCESS && result;
}

/* Own topics of box `cn`: suffix under <prefix>/<cn>/. */
static int own(const char *cn, const char *topic, const char *suffix)
{
    char filter[MAX_TOPIC];
    int n = snprintf(filter, sizeof(filter), "%s/%s/%s", prefix, cn, suffix);
    return n > 0 && (size_t)n < sizeof(filter) && matches(filter, topic);
}

static int own_literal(const char *cn, const char *topic, const char *suffix)
{
    char filter[MAX_TOPIC];
    int n = snprintf(filter, sizeof(filter), "%s/%s/%s", prefix, cn, suffix);
    return n > 0 && (size_t)n < sizeof(filter) && strcmp(filter, topic) == 0;
}

static int any_box(const char *topic, const char *suffix, int literal)
{
    char filter[MAX_TOPIC];
    int n = snprintf(filter, sizeof(filter), "%s/+/%s", prefix, suffix);
    if(n <= 0 || (size_t)n >= sizeof(filter)) return 0;
    return literal ? strcmp(filter, topic) == 0 : matches(filter, topic);
}

static int box_allowed(const char *cn, int access, const char *topic)
{
    switch(access){
        case MOSQ_ACL_SUBSCRIBE:
            return own_literal(cn, topic, "ack") || own_literal(cn, topic, "util/ack")
                || own_literal(cn, topic, "worklist") || own_literal(cn, topic, "worklist/status/ack")
                || own_literal(cn, topic, "commission/ack") || own_literal(cn, topic, "cmd");
        case MOSQ_ACL_READ:
            return own(cn, topic, "ack") || own(cn, topic, "util/ack") || own(cn, topic, "worklist")
                || own(cn, topic, "worklist/status/ack") || own(cn, topic, "commission/ack") || own(cn, topic, "cmd");
        case MOSQ_ACL_WRITE:
            return own(cn, topic, "up/+") || own(cn, topic, "state") || own(cn, topic, "health")
                || own(cn, topic, "util") || own(cn, topic, "worklist/status") || own(cn, topic, "commission")
                || own(cn, topic, "cmd/result") || own(cn, topic, "cmd/blob");
        default:
            return 0;
    }
}

static int ingest_allowed(int access, const char *topic)
{
    const char *rest;
    switch(access){
        case MOSQ_ACL_SUBSCRIBE:  /* $share/<group>/<prefix>/+/up/+ only */
            if(strncmp(topic, "$share/", 7) != 0) return 0;
            rest = strchr(topic + 7, '/');
            return rest != NULL && rest != topic + 7 && any_box(rest + 1, "up/+", 1);
        case MOSQ_ACL_READ:
            return any_box(topic, "up/+", 0);
        case MOSQ_ACL_WRITE:
            return any_box(topic, "ack", 0);
        default:
            return 0;
    }
}

static int fleet_allowed(int access, const char *topic)
{
    switch(access){
        case MOSQ_ACL_SUBSCRIBE:
            return any_box(topic, "state", 1) || any_box(topic, "health", 1) || any_box(topic, "util", 1)
                || any_box(topic, "worklist/status", 1) || any_box(topic, "commission", 1)
                || any_box(topic, "cmd/result", 1) || any_box(topic, "cmd/blob", 1);
        case MOSQ_ACL_READ:
            return any_box(topic, "state", 0) || any_box(topic, "health", 0) || any_box(topic, "util", 0)
                || any_box(topic, "worklist/status", 0) || any_box(topic, "commission", 0)
                || any_box(topic, "cmd/result", 0) || any_box(topic, "cmd/blob", 0);
        case MOSQ_ACL_WRITE:
            return any_box(topic, "util/ack", 0) || any_box(topic, "worklist", 0)
                || any_box(topic, "worklist/status/ack", 0) || any_box(topic, "commission/ack", 0)
                || any_box(topic, "cmd", 0);
        default:
            return 0;
    }
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_acl_check *ed = event_data;
    const char *cn = mosquitto_client_username(ed->client);
    ASN1_INTEGER *serial = NULL;
    char cert_cn[MAX_CN + 1];
    int allowed;
    (void)event;
    (void)userdata;

    if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
    if(cn == NULL) return MOSQ_ERR_ACL_DENIED;  /* only on_basic_auth sets a username */
    /* The certificate is gone once the socket is closed (a last will is checked then): the
     * username on_basic_auth set from it still names the identity. */
    if(identity(ed->client, cert_cn, sizeof(cert_cn), &serial) == 0){
        allowed = strcmp(cn, cert_cn) == 0 && !revoked(serial);
        ASN1_INTEGER_free(serial);
        if(!allowed) return MOSQ_ERR_ACL_DENIED;
    }else if(serial != NULL){
        ASN1_INTEGER_free(serial);
    }
    if(strchr(cn, '.') == NULL){
        allowed = box_allowed(cn, ed->access, ed->topic);
    }else if(strncmp(cn, "cloud.ingest.", 13) == 0){
        allowed = ingest_allowed(ed->access, ed->topic);
    }else if(strncmp(cn, "cloud.fleet.", 12) == 0){
        allowed = fleet_allowed(ed->access, ed->topic);
    }else{
        allowed = 0;
    }
    if(!allowed && ed->access == MOSQ_ACL_SUBSCRIBE){
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "mgw_guard: refused %s subscribing to %s", cn, ed->topic);
    }
    return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_tick(int event, void *event_data, void *userdata)
{
    time_t now = time(NULL);
    (void)event;
    (void)event_data;
    (void)userdata;
    if(now >= next_poll){
        next_poll = now + CRL_POLL_S;
        load_crl();
    }
    return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    (void)userdata;
    load_crl();
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
    (void)userdata;
    plugin_id = identifier;
    for(int i = 0; i < opt_count; i++){
        if(strcmp(opts[i].key, "prefix") == 0){
            snprintf(prefix, sizeof(prefix), "%s", opts[i].value);
        }else if(strcmp(opts[i].key, "crl_file") == 0){
            crl_file = strdup(opts[i].value);
        }
    }
    if(prefix[0] == '\0' || strchr(prefix, '+') || strchr(prefix, '#')){
        mosquitto_log_printf(MOSQ_LOG_ERR, "mgw_guard: plugin_opt_prefix must be set to the topic prefix");
        return MOSQ_ERR_INVAL;
    }
    load_crl();
    mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
    mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
    mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
    mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
    (void)userdata;
    (void)opts;
    (void)opt_count;
    mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
    mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
    mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
    mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
    while(seen != NULL){
        struct seen *next = seen->next;
        free(seen->client_id);
        if(seen->serial != NULL) ASN1_INTEGER_free(seen->serial);
        free(seen);
        seen = next;
    }
    if(crl != NULL) X509_CRL_free(crl);
    crl = NULL;
    free(crl_file);
    crl_file = NULL;
    return MOSQ_ERR_SUCCESS;
}
