"""Strict TOML configuration: one frozen ``Settings`` tree, loaded once, passed explicitly.

Site settings (``/etc/gateway/gateway.toml``) are overridden table by table by
device settings (``$STATE_DIRECTORY/device.toml``, written by provisioning).
An unknown key, a missing required key or a wrong type raises ``ConfigError``
naming the file, the table and the key. Every field carries help text in its
metadata; docs/config.md documents each one (a test checks).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.core.errors import ConfigError as ConfigError  # re-exported: callers catch config.ConfigError
from gateway.core.topics import BOX_ID_PATTERN
from gateway.i18n import _

if TYPE_CHECKING:
    from gateway.core.utilisation import OpeningHours, Zone

T = TypeVar("T")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, tuple | list):
        return field(default_factory=lambda: tuple(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _req(help: str) -> Any:
    return field(metadata={"help": help})


@dataclass(frozen=True)
class DicomSettings:
    ae_title: str = _f("MGW", "AE title this box answers to (called AE); 1-16 characters")
    bind_host: str = _f("127.0.0.1", "address the DICOM listener binds: the box's address on the modality side "
                                     "(provisioning records it); until then loopback only. 0.0.0.0 or :: (every "
                                     "interface) is refused unless allow_any_address")
    allow_any_address: bool = _f(False, "let bind_host be 0.0.0.0 or :: (every interface, a USB or uplink link "
                                        "included); off: the listener faces the modality's network only")
    port: int = _f(11112, "TCP port of the DICOM listener (104 needs CAP_NET_BIND_SERVICE); "
                   "0 = any free port, reported in state_dir/ports/edge.json")
    max_pdu_bytes: int = _f(1048576, "largest P-DATA PDU we accept; 0 = unlimited")
    allowed_calling_aets: tuple[str, ...] = _f((), "calling AE titles allowed to associate from any address")
    allowed_peers: tuple[str, ...] = _f((), "modalities allowed to associate, as AE@address or AE@network/prefix "
                                            "(recorded by provisioning); with both lists empty a provisioned box "
                                            "admits no modality, an unprovisioned one any")
    tls_cert_file: str = _f("", "certificate of the DICOM listener; set (with tls_key_file) to require DICOM TLS")
    tls_key_file: str = _f("", "private key of the DICOM listener (0600)")
    tls_ca_file: str = _f("", "CA bundle of modality client certificates; set to require them (mutual DICOM TLS)")
    max_associations: int = _f(8, "associations served at once")
    network_timeout_s: float = _f(60.0, "idle timeout on an association's socket")
    dimse_timeout_s: float = _f(60.0, "timeout waiting for a DIMSE message")


@dataclass(frozen=True)
class MqttSettings:
    host: str = _f("127.0.0.1", "MQTT broker host name or address")
    port: int = _f(1883, "MQTT broker port (8883 for TLS)")
    topic_prefix: str = _f("mgw/v1", "first topic levels; never carries patient data")
    keepalive_s: int = _f(30, "MQTT keepalive interval")
    ca_file: str = _f("", "CA bundle for the broker's certificate; set to enable TLS")
    cert_file: str = _f("", "this client's certificate (mutual TLS)")
    key_file: str = _f("", "this client's private key (mutual TLS), 0600")
    reconnect_min_s: float = _f(1.0, "first reconnect delay; doubles up to reconnect_max_s, with jitter")
    reconnect_max_s: float = _f(60.0, "longest reconnect delay")
    max_topic_levels: int = _f(8, "deepest topic the broker allows (AWS IoT: 8); topic_prefix + 3 levels must fit")


@dataclass(frozen=True)
class UplinkSettings:
    max_frame_bytes: int = _f(131072, "largest chunk frame on the wire (<= 128 KiB for any broker)")
    window_chunks: int = _f(64, "chunks published but not yet acknowledged by the cloud, at most")
    window_bytes: int = _f(8 * 1024**2, "bytes published but not yet acknowledged, at most; below it the sender "
                           "keeps twice the path's measured bandwidth-delay product in flight")
    ack_timeout_s: float = _f(30.0, "resend a chunk not acknowledged by the cloud within this time")
    transfers_in_flight: int = _f(32, "objects sent concurrently (the window in bytes is what limits)")
    zstd_level: int = _f(3, "zstandard level for packing (1-19)")
    pixel_codec: bool = _f(True, "pack uncompressed images with the pixel-aware codec (best-of image codecs, codec 3)")
    pixel_format: int = _f(2, "PIXEL format: 2 = best of JPEG-XL, HTJ2K, JPEG 2000, JPEG-LS (codec 3); "
                              "1 = JPEG-LS only (codec 2), for a cloud older than codec 3")
    codec_budget_ms_per_mb: float = _f(65.0, "encode-time budget of the pixel codec, in modelled CPU ms per MB of "
                                             "pixels (65: about 20 MB/s per core)")
    codec_backlog_mb: float = _f(256.0, "each this many MB packed but not yet acknowledged adds one more budget "
                                        "(up to 8x): a backlogged uplink gets smaller objects")
    jpegxl_effort: int = _f(3, "JPEG-XL lossless effort of the pixel codec (1-9; higher is smaller and slower)")
    max_send_attempts: int = _f(20, "resend rounds of one object before it is quarantined")
    max_kbps: int = _f(0, "uplink cap in kbit/s outside every bandwidth window; 0 = unlimited")
    bandwidth_windows: tuple[str, ...] = _f((), "caps by local time, first match wins: '[mon[-fri] ]HH:MM-HH:MM=KBPS'")


@dataclass(frozen=True)
class SpoolSettings:
    retention_hours: float = _f(72.0, "keep acknowledged instances this long before purging")
    high_water_percent: float = _f(90.0, "refuse C-STORE (0xA700) above this disk use")
    low_water_percent: float = _f(85.0, "accept again below this disk use")
    max_pack_attempts: int = _f(3, "pack failures of one instance before it is quarantined")
    encrypt_at_rest: bool = _f(True, "seal spooled originals with the cache key from the key store (AES-256-GCM)")
    study_stable_s: float = _f(120.0, "a study with no new instance for this long is reported complete")


@dataclass(frozen=True)
class PrioritySettings:
    stat_calling_aets: tuple[str, ...] = _f((), "instances from these calling AE titles are STAT (jump the queue)")
    stat_modalities: tuple[str, ...] = _f((), "instances of these Modality (0008,0060) values are STAT, e.g. 'CT'")
    honor_dicom_priority: bool = _f(True, "C-STORE Priority HIGH and Requested Procedure Priority HIGH/STAT raise "
                                          "the priority")


@dataclass(frozen=True)
class CommitmentSettings:
    enabled: bool = _f(True, "offer Storage Commitment (push model) to modalities on the edge AE")
    modalities: tuple[str, ...] = _f((), "where to send an N-EVENT-REPORT when the requesting association is "
                                      "closed: 'AE@host:port' per modality, AE = the modality's calling AE title")
    absent_grace_s: float = _f(60.0, "a referenced instance not received this long after the request is "
                                     "failed (0x0112)")
    max_wait_hours: float = _f(168.0, "a referenced instance not acknowledged by the cloud this long after the "
                                      "request is failed (0x0110)")
    report_retry_min_s: float = _f(5.0, "first delay before re-sending an undelivered N-EVENT-REPORT; doubles")
    report_retry_max_s: float = _f(600.0, "longest delay between N-EVENT-REPORT delivery attempts")
    max_report_attempts: int = _f(100, "delivery attempts of one N-EVENT-REPORT before it is abandoned (alert)")
    same_association_quiet_s: float = _f(1.0, "send the report on an open association of the modality only once "
                                              "it has been quiet this long with no request of its own waiting "
                                              "(else a new association, or wait)")
    same_association_max_wait_s: float = _f(30.0, "when the association that asked is still open but not quiet, "
                                                   "wait this long for a quiet moment on it before a new "
                                                   "association to the modality's configured address")


@dataclass(frozen=True)
class BoxSettings:
    id: str = _req("this box's id: lowercase letters, digits and '-', as in its certificate")
    cloud_public_key: str = _req("the cloud's envelope X25519 public key, base64 of 32 bytes")
    state_dir: str = _f("", "spool, database and keys; default $STATE_DIRECTORY or /var/lib/gateway")
    log_level: str = _f("INFO", "DEBUG, INFO, WARNING or ERROR")
    site: str = _f("", "site this box serves, as bound to its enrolment token (written by provisioning)")
    modality: str = _f("", "modality this box serves, as bound to its enrolment token (written by provisioning)")


@dataclass(frozen=True)
class EnrolmentSettings:
    url: str = _f("", "the cloud enrolment endpoint (https://host:port); empty = no automatic renewal")
    ca_fingerprint: str = _f("", "SHA-256 (hex) of the fleet CA certificate, pinned at provisioning")
    renew_at_fraction: float = _f(0.667, "renew the box certificate once this fraction of its lifetime has passed")
    check_interval_s: float = _f(3600.0, "how often the edge checks whether its certificate is due for renewal")


@dataclass(frozen=True)
class ApplianceSettings:
    update_quiet_s: float = _f(300.0, "refuse an update (retry later, 21) while a study arrived this recently")
    update_mpps_stale_s: float = _f(14400.0, "refuse an update (21) while an MPPS step is IN PROGRESS, unless it "
                                    "was last updated longer ago than this (a step the modality never completed)")
    update_min_free_bytes: int = _f(512 * 1024**2, "refuse an update (21) with less free space on the data partition")
    commit_gate_timeout_s: float = _f(300.0, "the update commit gate waits this long for a healthy service")
    commit_gate_settle_s: float = _f(60.0, "then the service, C-ECHO and the uplink must stay healthy this long, "
                                     "checked again and again; one failure rolls back")
    export_after_down_s: float = _f(3600.0, "uplink down this long: a USB stick plugged in gets the emergency export")


@dataclass(frozen=True)
class NetworkSettings:
    """Which links the image gives an address (``mgw network render``, docs/operations.md "Network")."""

    uplink_interfaces: tuple[str, ...] = _f(("eno*", "ens*", "enp*", "eth*"), "links that get DHCP for the uplink: "
                                            "interface name globs or MAC addresses (aa:bb:cc:dd:ee:ff); a USB "
                                            "link (usb0, rndis0, enx...) is never one")
    modality_interfaces: tuple[str, ...] = _f((), "links facing the modality, names or MAC addresses: they get "
                                                  "dicom.bind_host as a static address, no DHCP; empty = the "
                                                  "modality is reached through the uplink links")
    modality_prefix_length: int = _f(24, "prefix length of dicom.bind_host on the modality links")


@dataclass(frozen=True)
class HealthSettings:
    heartbeat_s: float = _f(30.0, "heartbeat period; each heartbeat expires on the broker after twice this")
    metrics_bind: str = _f("127.0.0.1", "address of the local Prometheus /metrics endpoint; empty = off")
    metrics_port: int = _f(9464, "port of the local Prometheus /metrics endpoint; "
                           "0 = any free port, reported in state_dir/ports/edge.json")
    thermal_dir: str = _f("/sys/class/thermal", "where CPU temperature sensors are read (thermal_zone*/temp)")
    config_check_s: float = _f(30.0, "after a remote configuration change, how long the edge's loops and both MQTT "
                                      "connections have to come up before the change is rolled back")


@dataclass(frozen=True)
class UtilisationSettings:
    mpps: bool = _f(True, "accept MPPS (N-CREATE/N-SET) from the modality as the source of exam times")
    exam_quiet_s: float = _f(300.0, "an exam is complete once no instance of its study arrived for this long")
    utc_offset_minutes: int = _f(0, "the modality clock's offset from UTC when a header carries none")
    max_header_age_h: float = _f(24.0, "header times older than this before receipt are not used (bad clock, re-send)")
    max_header_ahead_s: float = _f(300.0, "header times later than receipt by more than this are not used")
    resend_s: float = _f(60.0, "resend a utilisation record the cloud has not acknowledged after this")


@dataclass(frozen=True)
class WorklistSettings:
    enabled: bool = _f(True, "offer Modality Worklist C-FIND (answered from the box's sealed cache; an empty cache "
                             "answers no matches)")
    station_filter: str = _f("calling_ae", "which steps a modality sees: 'calling_ae' = those whose Scheduled "
                                           "Station AE Title is its calling AE title; 'none' = every step cached")
    include_unassigned: bool = _f(True, "with station_filter = 'calling_ae', also steps with no Scheduled Station "
                                        "AE Title")
    max_results: int = _f(500, "matches answered to one C-FIND at most, earliest scheduled first")
    keep_hours: float = _f(48.0, "a step scheduled longer ago than this is removed from the cache")
    status_resend_s: float = _f(60.0, "resend a performed status (MPPS) the cloud has not acknowledged after this")


@dataclass(frozen=True)
class EdgeSettings:
    box: BoxSettings = _req("this box")
    dicom: DicomSettings = _f(None, "the DICOM listener facing the modality")
    mqtt: MqttSettings = _f(None, "the uplink broker")
    uplink: UplinkSettings = _f(None, "chunking, windows and retries of the uplink")
    spool: SpoolSettings = _f(None, "local cache policy")
    enrolment: EnrolmentSettings = _f(None, "certificate enrolment and renewal")
    appliance: ApplianceSettings = _f(None, "update hooks and USB sticks (docs/operations.md)")
    network: NetworkSettings = _f(None, "which links get an address (the appliance image's systemd-networkd)")
    health: HealthSettings = _f(None, "heartbeat, birth/death and the local metrics endpoint")
    utilisation: UtilisationSettings = _f(None, "exam records from headers and MPPS")
    commitment: CommitmentSettings = _f(None, "Storage Commitment (push model) SCP")
    priority: PrioritySettings = _f(None, "which instances jump the uplink queue")
    worklist: WorklistSettings = _f(None, "Modality Worklist SCP answering from the box's cache")
    site: SiteSettings = _f(None, "the site's time zone, opening hours and region (written by provisioning); "
                            "times on the box are shown in this zone, and the box announces them to the fleet")


@dataclass(frozen=True)
class CloudNodeSettings:
    state_dir: str = _f("", "archive, index and keys; default $STATE_DIRECTORY or /var/lib/gateway")
    envelope_key_file: str = _f("keys/envelope.key", "X25519 private key (raw 32 bytes, 0600), relative to state_dir")
    archive_key_file: str = _f("keys/archive.key", "AES-256 key sealing archived objects at rest (raw 32 bytes, 0600), "
                               "relative to state_dir or absolute (another volume, a KMS mount)")
    ack_key_file: str = _f("keys/ack.key", "Ed25519 key that signs acks (raw 32 bytes, 0600), relative to state_dir; "
                                         "the next key of a rotation sits beside it as ack.next.key")
    log_level: str = _f("INFO", "DEBUG, INFO, WARNING or ERROR")


@dataclass(frozen=True)
class IngestSettings:
    share_group: str = _f("ingest", "MQTT 5 shared-subscription group of the ingest workers")
    max_object_bytes: int = _f(4 * 1024**3, "refuse objects that declare more than this size")
    staging_ttl_hours: float = _f(48.0, "drop staged chunks of transfers idle this long (the box resends them)")
    worker_id: str = _f("1", "stable id of this worker in its node; a restarted worker resumes its MQTT session")
    session_expiry_s: int = _f(60, "MQTT session expiry of a worker: a worker back within it resumes its queue; "
                               "a dead worker stops receiving shared-subscription messages once it lapses")
    metrics_bind: str = _f("127.0.0.1", "address of this worker's Prometheus /metrics")
    metrics_port: int = _f(9471, "port of this worker's /metrics (each worker of a node needs its own; "
                           "0 = any free port, reported in state_dir/ports/ingest-<group>-<worker>.json)")
    metrics_token_file: str = _f("", "file holding a bearer token (0600, relative to state_dir) that this worker's "
                                 "/metrics requires; empty = none")


@dataclass(frozen=True)
class AuthoritySettings:
    pki_dir: str = _f("pki", "fleet CA key, certificate, registry and CRL, relative to state_dir")
    box_cert_days: float = _f(90.0, "lifetime of box certificates; boxes renew at 2/3 of it")
    token_ttl_hours: float = _f(72.0, "default lifetime of an enrolment token")
    enrol_host: str = _f("127.0.0.1", "address the enrolment endpoint binds")
    enrol_port: int = _f(8443, "TCP port of the enrolment endpoint (HTTPS); "
                         "0 = any free port, reported in state_dir/ports/enrolment.json")
    enrol_hostnames: tuple[str, ...] = _f(("127.0.0.1", "localhost"),
                                          "names and addresses in the endpoint's certificate")
    enrol_metrics_bind: str = _f("127.0.0.1", "address of the enrolment endpoint's Prometheus /metrics (plain "
                                 "HTTP: loopback or the operations network); empty = off")
    enrol_metrics_port: int = _f(9472, "port of the enrolment endpoint's /metrics; "
                                 "0 = any free port, reported in state_dir/ports/enrolment.json")
    enrol_metrics_token_file: str = _f("", "file holding a bearer token (0600, relative to state_dir) that the "
                                       "enrolment endpoint's /metrics requires; empty = none")
    broker_host: str = _f("", "broker host boxes are told to use; empty = mqtt.host")
    broker_port: int = _f(8883, "broker TLS port boxes are told to use")
    broker_crl_file: str = _f("", "where the broker reads the CRL: every revocation and renewal rewrites it "
                                  "(relative to state_dir); empty = only pki_dir/crl.pem")


@dataclass(frozen=True)
class EnrolmentLimitSettings:
    """What one address, token or box may ask of the enrolment endpoint; over it, refused, others served."""

    address_per_minute: float = _f(6.0, "enrolment and renewal requests one source address (IPv6: its /64) may "
                                        "make per minute on average; more get HTTP 429 with Retry-After")
    address_burst: int = _f(10, "requests one source address may make at once after a quiet spell")
    token_per_minute: float = _f(2.0, "attempts with one enrolment token per minute on average")
    token_burst: int = _f(3, "attempts with one enrolment token at once")
    box_per_minute: float = _f(1.0, "renewal requests per minute from one box certificate on average")
    box_burst: int = _f(3, "renewal requests from one box certificate at once")
    max_failures: int = _f(5, "refused attempts of one address, token or box within failure_window_s "
                              "that lock it out")
    failure_window_s: float = _f(900.0, "refused attempts older than this no longer count toward a lockout")
    lockout_s: float = _f(900.0, "how long a locked-out address, token or box is refused without a try")
    max_tracked_keys: int = _f(10000, "addresses, tokens and boxes remembered per table (the least recently "
                                      "seen are forgotten first): bounds the memory a flood can take")
    max_body_bytes: int = _f(65536, "largest request body accepted (HTTP 413 above); read no further")
    max_connections: int = _f(32, "connections served at once; more are closed unanswered")
    request_timeout_s: float = _f(10.0, "a connection silent this long (TLS handshake, headers or body) is closed")


@dataclass(frozen=True)
class IndexSettings:
    backend: str = _f("sqlite", "archive index, ingest staging and fleet store: sqlite (one node) or postgres (many)")
    dsn: str = _f("", "postgres: libpq connection string without a password, e.g. 'host=db dbname=mgw user=mgw'")
    password_file: str = _f("", "postgres: file holding the password (0600), relative to state_dir; empty = none")


@dataclass(frozen=True)
class ForwardSettings:
    stow_url: str = _f("", "DICOMweb STOW-RS endpoint of the reading site's PACS (.../studies); empty = off")
    stow_username: str = _f("", "HTTP basic-auth user for STOW-RS; its password is in stow_password_file")
    stow_password_file: str = _f("", "file holding the STOW-RS password (0600), relative to state_dir")
    cstore_host: str = _f("", "C-STORE SCP host of the PACS; empty = off")
    cstore_port: int = _f(104, "C-STORE SCP port of the PACS")
    cstore_called_ae: str = _f("PACS", "AE title of the PACS (called AE)")
    cstore_calling_ae: str = _f("MGW-CLOUD", "our AE title towards the PACS (calling AE)")
    timeout_s: float = _f(60.0, "network timeout of one forward attempt")
    batch: int = _f(32, "queue entries one forwarder claims at a time")
    lease_s: float = _f(300.0, "a claimed entry returns to the queue if not finished within this time")
    backoff_min_s: float = _f(5.0, "first retry delay; doubles per attempt up to backoff_max_s")
    backoff_max_s: float = _f(3600.0, "longest retry delay")
    max_attempts: int = _f(50, "attempts before an entry is FAILED (alerted, retried only by an operator)")


@dataclass(frozen=True)
class SiteSettings:
    """One site's local rules for utilisation (``[fleet.sites.<site-id>]``); empty = the fleet's."""

    time_zone: str = _f("", "the site's IANA time zone, e.g. 'Asia/Shanghai' (daylight saving followed); "
                        "empty = fleet.time_zone")
    weekly_hours: tuple[str, ...] = _f((), "the site's opening hours per weekday, e.g. ['mon-fri 08:00-18:00', "
                                       "'sat 08:00-12:00'], days not listed closed; empty = the fleet's hours")
    turnaround_target_s: float = _f(0.0, "the site's study turnaround target (last image to durable in the "
                                    "cloud); 0 = fleet.turnaround_target_s")
    region: str = _f("", "the region the site belongs to, for the console's filters and grouping (free text, "
                     "e.g. 'Xinjiang'); empty = none")


@dataclass(frozen=True)
class AuthSettings:
    """The console's logins, sessions and lockouts (``[fleet.auth]``; docs/operations.md, "Accounts")."""

    session_idle_minutes: float = _f(30.0, "a console session unused this long ends (the user logs in again)")
    session_hours: float = _f(12.0, "a console session ends this long after its login, used or not")
    lockout_failures: int = _f(5, "failed logins in a row that lock a local account")
    lockout_minutes: float = _f(15.0, "how long a locked account refuses every login (`mgw cloud user unlock` ends "
                                "it sooner)")
    address_failures: int = _f(20, "failed logins from one client address within address_window_minutes after "
                               "which that address is refused (any account)")
    address_window_minutes: float = _f(15.0, "the window of address_failures")
    trusted_proxies: tuple[str, ...] = _f((), "addresses of reverse proxies whose X-Forwarded-For names the client "
                                          "(audit, per-address limits); empty = the connection's address only")


@dataclass(frozen=True)
class OidcSettings:
    """OpenID Connect login for a site's identity provider (``[fleet.oidc]``); off while issuer is empty."""

    issuer: str = _f("", "the provider's issuer URL (https://...); empty = OpenID Connect login off")
    client_id: str = _f("", "this console's client id at the provider")
    client_secret_file: str = _f("", "file holding the client secret (0600), relative to state_dir")
    redirect_url: str = _f("", "the console's callback as the provider knows it: https://<console>/auth/oidc/callback")
    ca_file: str = _f("", "CA bundle trusted for the provider's HTTPS; empty = the system's")
    roles_claim: str = _f("groups", "the ID token claim (a string or a list of strings) mapped to a role")
    role_map: tuple[str, ...] = _f((), "claim value to role, e.g. ['radiology-ops=operator', 'mgw-admins=admin']; "
                                   "the highest mapped role wins; a user with none is refused")
    sites_claim: str = _f("", "the claim listing the user's sites; empty = every site")


@dataclass(frozen=True)
class FleetWorklistSettings:
    """The worklist feed (``[fleet.worklist]``; docs/operations.md, "The worklist feed"): the RIS
    readers, the snapshot window, and where performed statuses go."""

    enabled: bool = _f(False, "run the worklist feed: publish each routed box's worklist, take its statuses")
    days_before: int = _f(1, "a box's snapshot holds steps scheduled from this many days before today")
    days_ahead: int = _f(7, "... to this many days after today (steps with no date are always in)")
    publish_s: float = _f(5.0, "the leader looks for changed snapshots this often")
    keep_days: float = _f(30.0, "cancelled and performed orders are forgotten this long after their last change, "
                          "open ones this long after their scheduled day")
    mwl_host: str = _f("", "the RIS's Modality Worklist SCP (C-FIND) to poll; empty = no poller")
    mwl_port: int = _f(104, "its port")
    mwl_called_ae: str = _f("RIS", "its AE title")
    mwl_calling_ae: str = _f("MGW-CLOUD", "the AE title the poller calls it from")
    poll_s: float = _f(60.0, "poll the MWL SCP this often; each answer is the whole current worklist")
    hl7_port: int = _f(-1, "port of the MLLP listener taking HL7 ORM^O01 orders; -1 = none, 0 = any free port")
    hl7_bind: str = _f("127.0.0.1", "address of the MLLP listener")
    hl7_max_connections: int = _f(8, "MLLP connections open at once; more are closed at once")
    hl7_idle_s: float = _f(60.0, "an MLLP connection idle this long is closed")
    hl7_allowed_peers: tuple[str, ...] = _f((), "addresses or networks (a.b.c.d/n) allowed to send orders; "
                                            "empty = any")
    ris_hl7_host: str = _f("", "the RIS's MLLP address for performed statuses (ORM^O01, ORC-1 SC); "
                           "empty = statuses of HL7 orders are stored, not sent")
    ris_hl7_port: int = _f(2575, "its port")
    mpps_host: str = _f("", "the RIS's MPPS SCP for statuses of C-FIND orders; empty = not sent")
    mpps_port: int = _f(104, "its port")
    mpps_called_ae: str = _f("RIS", "its AE title")
    retry_s: float = _f(60.0, "a status the RIS did not take is sent again after this long")


@dataclass(frozen=True)
class FleetSettings:
    http_bind: str = _f("127.0.0.1", "address of the fleet console (REST API, dashboard, /metrics)")
    http_port: int = _f(8080, "port of the fleet console (HTTPS); "
                        "0 = any free port, reported in state_dir/ports/fleet-<worker>.json")
    tls_cert_file: str = _f("", "the console's HTTPS certificate (PEM, with its chain), relative to state_dir; "
                            "empty = one the fleet CA issues (authority.pki_dir/console.pem) for tls_hostnames")
    tls_key_file: str = _f("", "the private key of tls_cert_file (0600), relative to state_dir")
    tls_hostnames: tuple[str, ...] = _f(("127.0.0.1", "localhost"),
                                        "names and addresses in the certificate the fleet CA issues the console")
    plain_http: bool = _f(False, "serve the console over plain HTTP: loopback development only "
                          "(http_bind must be a loopback address); the service logs a warning")
    offline_after_s: float = _f(90.0, "a box with no birth nor heartbeat for this long is offline")
    backlog_alert_minutes: float = _f(60.0, "alert when a box's oldest unacknowledged item is older")
    disk_alert_percent: float = _f(85.0, "alert when a box's state disk is fuller")
    cert_alert_days: float = _f(30.0, "alert when a box's certificate expires within this many days")
    silent_modality_hours: float = _f(4.0, "alert when a modality sent no study for this many opening hours "
                                   "(its site's, [fleet.sites.<id>], or the fleet's)")
    opening_hours: str = _f("08:00-18:00", "local opening hours, HH:MM-HH:MM, for utilisation and silence")
    open_weekdays: tuple[int, ...] = _f((1, 2, 3, 4, 5, 6), "ISO weekdays the sites open (1 = Monday)")
    utc_offset_minutes: int = _f(0, "deprecated: a fixed offset from UTC (480 for China), used only when "
                                 "time_zone is empty; set time_zone instead")
    time_zone: str = _f("", "the sites' IANA time zone, e.g. 'Asia/Shanghai' (daylight saving followed); "
                        "empty = the fixed utc_offset_minutes")
    weekly_hours: tuple[str, ...] = _f((), "opening hours per weekday, e.g. ['mon-fri 08:00-18:00', "
                                       "'sat 08:00-12:00'], days not listed closed; empty = opening_hours on "
                                       "open_weekdays")
    turnaround_target_s: float = _f(1800.0, "study turnaround target (last image received to durable in the "
                                    "cloud); p95 above it is flagged")
    sites: dict[str, SiteSettings] = field(default_factory=dict, metadata={
        "help": "per-site rules, [fleet.sites.<site-id>], the site as bound to the box's enrolment token"})
    min_exam_s: float = _f(60.0, "an exam shorter than this (one image) occupies the table this long")
    patient_change_max_s: float = _f(900.0, "gaps between exams up to this long are patient change, longer idle")
    history_interval_s: float = _f(300.0, "keep one health sample per box this often")
    history_days: float = _f(30.0, "drop health samples and cleared alerts older than this")
    site_outage_boxes: int = _f(3, "this many boxes of one site offline within site_outage_window_s are one "
                                "site_offline alert (so are all of a site's boxes, two or more)")
    site_outage_window_s: float = _f(300.0, "boxes of a site going offline within this many seconds of each other "
                                     "count as one outage")
    lease_s: float = _f(10.0, "the leader lease of several fleet instances on one store: renewed every second, "
                        "taken over by another instance this long after its holder stopped renewing it (3 to 3600)")
    command_key_file: str = _f("keys/command.key", "Ed25519 key that signs remote commands (raw 32 bytes, 0600), "
                               "relative to state_dir; created on first use; its public half reaches boxes at "
                               "enrolment and renewal (command_keys)")
    command_ttl_s: float = _f(86400.0, "a remote command not answered within this many seconds expires "
                              "(60 to 2592000; an operator may give a shorter lifetime per command)")
    command_resend_s: float = _f(30.0, "the leader publishes a box's open command again this often until a result")
    auth: AuthSettings = field(default_factory=AuthSettings, metadata={"help": "console logins, sessions, lockouts"})
    oidc: OidcSettings = field(default_factory=OidcSettings, metadata={"help": "OpenID Connect login"})
    worklist: FleetWorklistSettings = field(default_factory=FleetWorklistSettings, metadata={
        "help": "the worklist feed: RIS readers, snapshots to the boxes, statuses to the RIS"})


@dataclass(frozen=True)
class BudgetSettings:
    """What one box may hold of the cloud; a box over budget is slowed, others are unaffected."""

    max_messages_per_s: float = _f(400.0, "chunk messages per second one box may have handled by one worker; "
                                   "above it chunks are dropped unacknowledged (the box resends later)")
    burst_messages: int = _f(2000, "messages a box may send at once above its rate before it is slowed")
    max_open_transfers: int = _f(64, "unfinished transfers one box may have staged; a chunk of a further one "
                                 "waits (is not acknowledged) until one completes or expires")
    max_staging_bytes: int = _f(8 * 1024**3, "staged bytes above which a box may start no new transfer (it "
                                "may finish those it has: at most this plus ingest.max_object_bytes)")
    usage_refresh_s: float = _f(2.0, "how long a worker trusts its count of a box's staged transfers and bytes")


@dataclass(frozen=True)
class DeadLetterSettings:
    """Messages that cannot be processed: acknowledged at the broker, recorded, alerted, never redelivered."""

    keep_per_box: int = _f(1000, "dead letters kept per box (the oldest go first)")
    keep_total: int = _f(100_000, "dead letters kept in all")
    writes_per_box_per_minute: int = _f(60, "dead letters written per box and minute; more are counted into "
                                        "the last one written")
    alert_window_s: float = _f(3600.0, "a box has a dead_letters alert while it had one within this window")


@dataclass(frozen=True)
class CloudSettings:
    cloud: CloudNodeSettings = _f(None, "this cloud node")
    mqtt: MqttSettings = _f(None, "the broker the boxes publish to")
    ingest: IngestSettings = _f(None, "ingest workers")
    authority: AuthoritySettings = _f(None, "fleet certificate authority and enrolment endpoint")
    enrolment: EnrolmentLimitSettings = _f(None, "rate limits and lockouts of the enrolment endpoint")
    index: IndexSettings = _f(None, "archive index backend")
    forward: ForwardSettings = _f(None, "forwarding archived objects to the reading site's PACS")
    fleet: FleetSettings = _f(None, "fleet registry, analytics, alerts, API and dashboard")
    budgets: BudgetSettings = _f(None, "per-box limits at the cloud ingest")
    dead_letters: DeadLetterSettings = _f(None, "the dead-letter store for messages that cannot be processed")


BOX_ID = re.compile(BOX_ID_PATTERN)
ANY_ADDRESS = ("0.0.0.0", "::", "")  # noqa: S104 - the wildcard binds the listener check refuses
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash
AE_TITLE = _AE


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is bool:
        return type(value) is bool, value
    if tp is int:
        return type(value) is int, value
    if tp is float:
        return type(value) in (int, float), float(value) if type(value) in (int, float) else value
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list):
            return False, value
        checked = [_type_ok(v, inner) for v in value]
        return all(ok for ok, _ in checked), tuple(v for _, v in checked)
    raise AssertionError(f"unsupported config type {tp}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}s"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


def build(cls: type[T], table: dict[str, Any], source: str, where: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, strictly."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in known:
            raise ConfigError(_("{source}: unknown key '{key}'").format(source=source, key=f"{where}{key}"))
    kwargs: dict[str, Any] = {}
    for name, fld in known.items():
        tp = hints[name]
        if typing.get_origin(tp) is dict:
            kwargs[name] = _build_tables(typing.get_args(tp)[1], table.get(name, {}), source, f"{where}{name}")
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            sub = table.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(_("{source}: '{key}' must be a table").format(source=source, key=f"{where}{name}"))
            if name not in table and fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise ConfigError(_("{source}: missing table [{key}]").format(source=source, key=f"{where}{name}"))
            kwargs[name] = build(tp, sub, source, f"{where}{name}.")
        elif name in table:
            ok, value = _type_ok(table[name], tp)
            if not ok:
                raise ConfigError(_("{source}: '{key}' must be of type {type}").format(
                    source=source, key=f"{where}{name}", type=_type_name(tp)))
            kwargs[name] = value
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(_("{source}: missing required key '{key}'").format(source=source,
                                                                                 key=f"{where}{name}"))
    return cls(**kwargs)


def _build_tables(cls: type[T], tables: Any, source: str, where: str) -> dict[str, T]:
    """``[<where>.<name>]`` tables, each a ``cls``."""
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigError(f"{source}: '{where}' must hold tables [{where}.<name>]")
    return {name: build(cls, sub, source, f"{where}.{name}.") for name, sub in tables.items()}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(paths: list[Path]) -> tuple[dict[str, Any], str]:
    merged: dict[str, Any] = {}
    names = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                merged = _merge(merged, tomllib.load(fh))
        except FileNotFoundError as exc:
            raise ConfigError(_("{path}: file not found").format(path=path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(_("{path}: not valid TOML: {reason}").format(path=path, reason=exc)) from exc
        except OSError as exc:
            raise ConfigError(_("{path}: cannot read: {reason}").format(path=path, reason=exc.strerror)) from exc
        names.append(str(path))
    return merged, " + ".join(names)


def _check_topic_depth(mqtt: MqttSettings, source: str) -> None:
    """Chunk topics are ``<prefix>/<box>/up/<transfer>``: the prefix's levels plus three."""
    levels = len(mqtt.topic_prefix.split("/")) + 3
    if levels > mqtt.max_topic_levels:
        raise ConfigError(f"{source}: 'mqtt.topic_prefix' makes {levels}-level topics, "
                          f"more than 'mqtt.max_topic_levels' ({mqtt.max_topic_levels})")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _check_log_level(level: str, key: str, source: str) -> None:
    if level not in LOG_LEVELS:
        raise ConfigError(f"{source}: '{key}' must be one of {', '.join(LOG_LEVELS)}")


def _check_edge(s: EdgeSettings, source: str) -> None:
    _check_topic_depth(s.mqtt, source)
    _check_log_level(s.box.log_level, "box.log_level", source)
    if not BOX_ID.match(s.box.id):
        raise ConfigError(f"{source}: 'box.id' must match {BOX_ID.pattern}")
    if not _AE.match(s.dicom.ae_title):
        raise ConfigError(f"{source}: 'dicom.ae_title' must be 1-16 printable characters")
    for aet in s.dicom.allowed_calling_aets:
        if not _AE.match(aet):
            raise ConfigError(f"{source}: 'dicom.allowed_calling_aets' has an invalid AE title")
    from gateway.core.admission import parse_rules

    for rule in parse_rules(s.dicom.allowed_peers):
        if not _AE.match(rule.ae_title):
            raise ConfigError(f"{source}: 'dicom.allowed_peers' has an invalid AE title")
    if bool(s.dicom.tls_cert_file) != bool(s.dicom.tls_key_file):
        raise ConfigError(f"{source}: 'dicom.tls_cert_file' and 'dicom.tls_key_file' go together")
    if s.dicom.bind_host in ANY_ADDRESS and not s.dicom.allow_any_address:
        raise ConfigError(f"{source}: 'dicom.bind_host' {s.dicom.bind_host!r} listens on every interface; set the "
                          "box's address on the modality side, or 'dicom.allow_any_address = true'")
    if not 0 < s.spool.low_water_percent < s.spool.high_water_percent <= 100:
        raise ConfigError(f"{source}: need 0 < spool.low_water_percent < spool.high_water_percent <= 100")
    if not 1 <= s.uplink.window_chunks <= 1024:
        raise ConfigError(f"{source}: 'uplink.window_chunks' must be 1..1024")
    _check_pixel_codec(s.uplink, source)
    _check_commitment(s.commitment, source)
    _check_worklist(s.worklist, source)
    _check_network(s.network, source)
    _check_appliance(s.appliance, source)
    try:
        site_rules_hours(s.site)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    from gateway.core.bandwidth import parse_window

    for entry in s.uplink.bandwidth_windows:
        try:
            parse_window(entry)
        except ValueError as exc:
            raise ConfigError(f"{source}: 'uplink.bandwidth_windows': {exc}") from exc
    if s.uplink.max_kbps < 0:
        raise ConfigError(f"{source}: 'uplink.max_kbps' must be >= 0")
    from gateway.core.framing import MAX_FRAME_BYTES, MIN_FRAME_BYTES

    if not MIN_FRAME_BYTES <= s.uplink.max_frame_bytes <= MAX_FRAME_BYTES:
        raise ConfigError(f"{source}: 'uplink.max_frame_bytes' must be {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}")
    if not MAX_FRAME_BYTES <= s.uplink.window_bytes <= 1024 * MAX_FRAME_BYTES:
        raise ConfigError(f"{source}: 'uplink.window_bytes' must be {MAX_FRAME_BYTES}..{1024 * MAX_FRAME_BYTES}")
    import base64
    import binascii

    try:
        if len(base64.b64decode(s.box.cloud_public_key, validate=True)) != 32:
            raise ValueError
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{source}: 'box.cloud_public_key' must be base64 of 32 bytes") from exc


def _check_pixel_codec(u: UplinkSettings, source: str) -> None:
    if u.pixel_format not in (1, 2):
        raise ConfigError(f"{source}: 'uplink.pixel_format' must be 1 or 2")
    if not 1 <= u.jpegxl_effort <= 9:
        raise ConfigError(f"{source}: 'uplink.jpegxl_effort' must be 1..9")
    if u.codec_budget_ms_per_mb <= 0 or u.codec_backlog_mb <= 0:
        raise ConfigError(f"{source}: 'uplink.codec_budget_ms_per_mb' and 'uplink.codec_backlog_mb' must be positive")


def _check_appliance(a: ApplianceSettings, source: str) -> None:
    if min(a.update_quiet_s, a.update_mpps_stale_s, a.commit_gate_timeout_s, a.commit_gate_settle_s) < 0:
        raise ConfigError(f"{source}: '[appliance]' durations must be >= 0")


def _check_network(n: NetworkSettings, source: str) -> None:
    from gateway.core.networkd import parse_patterns

    for name in ("uplink_interfaces", "modality_interfaces"):
        try:
            parse_patterns(getattr(n, name), f"network.{name}")
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    if not 1 <= n.modality_prefix_length <= 128:
        raise ConfigError(f"{source}: 'network.modality_prefix_length' must be 1..128")


def load_network(paths: list[Path]) -> tuple[NetworkSettings, str]:
    """The ``[network]`` settings and ``dicom.bind_host``, from files that may lack ``[box]`` (an
    unprovisioned box still needs its uplink): ``mgw network render``."""
    table, source = read_toml(paths)
    for name in ("network", "dicom"):
        if not isinstance(table.get(name, {}), dict):
            raise ConfigError(f"{source}: '{name}' must be a table")
    network = build(NetworkSettings, table.get("network", {}), source, "network.")
    _check_network(network, source)
    return network, build(DicomSettings, table.get("dicom", {}), source, "dicom.").bind_host


def _check_worklist(w: WorklistSettings, source: str) -> None:
    if w.station_filter not in ("calling_ae", "none"):
        raise ConfigError(f"{source}: 'worklist.station_filter' must be 'calling_ae' or 'none'")
    if not 1 <= w.max_results <= 100000 or w.keep_hours <= 0 or w.status_resend_s <= 0:
        raise ConfigError(f"{source}: need 1 <= worklist.max_results <= 100000, worklist.keep_hours > 0 and "
                          "worklist.status_resend_s > 0")


def _check_commitment(c: CommitmentSettings, source: str) -> None:
    from gateway.core.commitment import parse_modality

    for entry in c.modalities:
        try:
            parse_modality(entry)
        except ValueError as exc:
            raise ConfigError(f"{source}: 'commitment.modalities': {exc}") from exc
    if c.max_report_attempts < 1 or c.report_retry_min_s <= 0 or c.report_retry_max_s < c.report_retry_min_s:
        raise ConfigError(f"{source}: need commitment.max_report_attempts >= 1 and "
                          "0 < report_retry_min_s <= report_retry_max_s")


def _fill_defaults(obj: T) -> T:
    """Replace ``None`` sub-tables (absent from the file) by their defaults."""
    changes = {}
    for fld in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, fld.name)
        tp = typing.get_type_hints(type(obj))[fld.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            changes[fld.name] = _fill_defaults(value if value is not None else tp())
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def load_edge(paths: list[Path]) -> EdgeSettings:
    table, source = read_toml(paths)
    settings = _fill_defaults(build(EdgeSettings, table, source))
    _check_edge(settings, source)
    return settings


def load_cloud(paths: list[Path]) -> CloudSettings:
    table, source = read_toml(paths)
    settings = _fill_defaults(build(CloudSettings, table, source))
    _check_topic_depth(settings.mqtt, source)
    _check_log_level(settings.cloud.log_level, "cloud.log_level", source)
    if settings.index.backend not in ("sqlite", "postgres"):
        raise ConfigError(f"{source}: 'index.backend' must be 'sqlite' or 'postgres'")
    if settings.index.backend == "postgres" and not settings.index.dsn:
        raise ConfigError(f"{source}: 'index.dsn' is required when 'index.backend' is 'postgres'")
    if "password" in settings.index.dsn.lower():
        raise ConfigError(f"{source}: 'index.dsn' must not carry a password; use 'index.password_file'")
    if settings.forward.cstore_host and not _AE.match(settings.forward.cstore_called_ae):
        raise ConfigError(f"{source}: 'forward.cstore_called_ae' must be 1-16 printable characters")
    _check_fleet(settings.fleet, source)
    _check_budgets(settings.budgets, source)
    _check_enrolment_limits(settings.enrolment, source)
    return settings


def _check_budgets(b: BudgetSettings, source: str) -> None:
    if not (b.max_messages_per_s > 0 and b.burst_messages >= 1 and b.max_open_transfers >= 1
            and b.max_staging_bytes > 0 and b.usage_refresh_s >= 0):
        raise ConfigError(f"{source}: '[budgets]' limits must be positive")


def _check_enrolment_limits(e: EnrolmentLimitSettings, source: str) -> None:
    positive = ("address_per_minute", "address_burst", "token_per_minute", "token_burst", "box_per_minute",
                "box_burst", "max_failures", "failure_window_s", "max_tracked_keys", "max_body_bytes",
                "max_connections", "request_timeout_s")
    import math

    for name in positive:
        if not 0 < getattr(e, name) < math.inf:
            raise ConfigError(f"{source}: 'enrolment.{name}' must be a positive finite number")
    if not 0 <= e.lockout_s < math.inf:
        raise ConfigError(f"{source}: 'enrolment.lockout_s' must be a finite number >= 0")


def _check_fleet(f: FleetSettings, source: str) -> None:
    try:
        site_hours(f, "")
    except ValueError as exc:
        raise ConfigError(f"{source}: 'fleet.time_zone'/'fleet.weekly_hours'/'fleet.opening_hours'/"
                          f"'fleet.open_weekdays': {exc}") from exc
    for site, rules in f.sites.items():
        try:
            site_hours(f, site)
        except ValueError as exc:
            raise ConfigError(f"{source}: 'fleet.sites.{site}': {exc}") from exc
        if rules.turnaround_target_s < 0:
            raise ConfigError(f"{source}: 'fleet.sites.{site}.turnaround_target_s' must be >= 0")
    if f.turnaround_target_s <= 0:
        raise ConfigError(f"{source}: 'fleet.turnaround_target_s' must be positive")
    if not 3.0 <= f.lease_s <= 3600.0:  # renewed every second: a few renewals may fail before it lapses
        raise ConfigError(f"{source}: 'fleet.lease_s' must be 3 to 3600 seconds")
    if not 60.0 <= f.command_ttl_s <= 30 * 86400.0:
        raise ConfigError(f"{source}: 'fleet.command_ttl_s' must be 60 to 2592000 seconds")
    if not 1.0 <= f.command_resend_s <= 3600.0:
        raise ConfigError(f"{source}: 'fleet.command_resend_s' must be 1 to 3600 seconds")
    if bool(f.tls_cert_file) != bool(f.tls_key_file):
        raise ConfigError(f"{source}: 'fleet.tls_cert_file' and 'fleet.tls_key_file' go together")
    if f.plain_http and f.tls_cert_file:
        raise ConfigError(f"{source}: 'fleet.plain_http' and 'fleet.tls_cert_file' exclude each other")
    if f.plain_http and not _loopback(f.http_bind):
        raise ConfigError(f"{source}: 'fleet.plain_http' needs a loopback 'fleet.http_bind' (127.0.0.1, ::1)")
    _check_auth(f.auth, f.oidc, source)
    _check_worklist_feed(f.worklist, source)


def _check_worklist_feed(w: FleetWorklistSettings, source: str) -> None:
    import ipaddress
    import math

    for name in ("publish_s", "poll_s", "hl7_idle_s", "retry_s", "keep_days"):
        if not 0.5 <= getattr(w, name) < math.inf:
            raise ConfigError(f"{source}: 'fleet.worklist.{name}' must be a finite number of at least 0.5")
    if not (0 <= w.days_before <= 31 and 0 <= w.days_ahead <= 366):
        raise ConfigError(f"{source}: 'fleet.worklist.days_before' is 0 to 31 and 'days_ahead' 0 to 366")
    if not -1 <= w.hl7_port <= 65535 or not 1 <= w.hl7_max_connections <= 1000:
        raise ConfigError(f"{source}: 'fleet.worklist.hl7_port' is -1 to 65535, 'hl7_max_connections' 1 to 1000")
    for name in ("mwl_port", "ris_hl7_port", "mpps_port"):
        if not 1 <= getattr(w, name) <= 65535:
            raise ConfigError(f"{source}: 'fleet.worklist.{name}' must be a TCP port (1 to 65535)")
    for name in ("mwl_called_ae", "mwl_calling_ae", "mpps_called_ae"):
        if not _AE.match(getattr(w, name)):
            raise ConfigError(f"{source}: 'fleet.worklist.{name}' must be 1-16 printable characters, no backslash")
    for peer in w.hl7_allowed_peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise ConfigError(f"{source}: 'fleet.worklist.hl7_allowed_peers': {peer[:60]!r} is not an address "
                              "or network") from None


def _check_auth(a: AuthSettings, o: OidcSettings, source: str) -> None:
    import math

    for name in ("session_idle_minutes", "session_hours", "lockout_failures", "lockout_minutes", "address_failures",
                 "address_window_minutes"):
        if not 0 < getattr(a, name) < math.inf:
            raise ConfigError(f"{source}: 'fleet.auth.{name}' must be a positive finite number")
    for entry in o.role_map:
        value, _, role = entry.rpartition("=")
        if not value or role not in ("viewer", "operator", "admin"):
            raise ConfigError(f"{source}: 'fleet.oidc.role_map' entries are 'claim-value=viewer|operator|admin', "
                              f"not {entry[:60]!r}")
    if o.issuer and not (o.client_id and o.redirect_url):
        raise ConfigError(f"{source}: 'fleet.oidc' needs a client_id and a redirect_url with its issuer")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def site_zone(f: FleetSettings, site: str) -> Zone:
    """The time zone of ``site``: its ``[fleet.sites.<site>] time_zone``, else the fleet's (ValueError
    for an unknown zone)."""
    from gateway.adapters.time_zone import zone

    rules = f.sites.get(site, SiteSettings())
    return zone(rules.time_zone or f.time_zone, f.utc_offset_minutes)


def site_rules_hours(rules: SiteSettings) -> OpeningHours | None:
    """The opening hours one site's own rules give (a box's ``[site]``), or None when they set no
    hours; ValueError naming the key (``'site.time_zone': ...``) for an unknown zone or malformed hours."""
    from gateway.adapters.time_zone import zone
    from gateway.core.utilisation import OpeningHours

    try:
        tz = zone(rules.time_zone)
    except ValueError as exc:
        raise ValueError(f"'site.time_zone': {exc}") from exc
    if rules.turnaround_target_s < 0:
        raise ValueError("'site.turnaround_target_s' must be >= 0")
    try:
        return OpeningHours.weekly(rules.weekly_hours, tz) if rules.weekly_hours else None
    except ValueError as exc:
        raise ValueError(f"'site.weekly_hours': {exc}") from exc


def site_hours(f: FleetSettings, site: str) -> OpeningHours:
    """The opening hours and time zone of ``site``: its ``[fleet.sites.<site>]`` table where it has
    one, each key left empty taking the fleet's. ValueError for an unknown zone or malformed hours."""
    from gateway.adapters.time_zone import zone
    from gateway.core.utilisation import OpeningHours

    rules = f.sites.get(site, SiteSettings())
    tz = zone(rules.time_zone or f.time_zone, f.utc_offset_minutes)
    if rules.weekly_hours:
        return OpeningHours.weekly(rules.weekly_hours, tz)
    if f.weekly_hours:
        return OpeningHours.weekly(f.weekly_hours, tz)
    return OpeningHours.parse(f.opening_hours, f.open_weekdays, zone=tz)


def turnaround_target_s(f: FleetSettings, site: str) -> float:
    rules = f.sites.get(site)
    return rules.turnaround_target_s if rules is not None and rules.turnaround_target_s > 0 else f.turnaround_target_s


def iter_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, type, help)`` for every leaf key, for docs and `mgw config`."""
    out = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        tp = hints[fld.name]
        if typing.get_origin(tp) is dict:
            out += iter_keys(typing.get_args(tp)[1], f"{prefix}{fld.name}.<name>.")
        elif dataclasses.is_dataclass(tp):
            out += iter_keys(tp, f"{prefix}{fld.name}.")  # type: ignore[arg-type]
        else:
            out.append((f"{prefix}{fld.name}", _type_name(tp), fld.metadata.get("help", "")))
    return out


