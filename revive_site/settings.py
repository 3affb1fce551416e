"""Revive settings: the environment is read here and nowhere else.

With no environment set, Revive runs on the embedded default: a SQLite file,
Celery in eager mode, the console e-mail backend, and a locally generated
secret key (``var/secret_key``). With ``DATABASE_URL`` and ``REDIS_URL`` it runs
on PostgreSQL and a Celery worker on Redis.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("REVIVE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env(
    DEBUG=(bool, False),
    REVIVE_PRODUCTION=(bool, False),
)
env_file = BASE_DIR / ".env"
if env_file.exists():
    environ.Env.read_env(str(env_file))

DEBUG = env("DEBUG")
PRODUCTION = env("REVIVE_PRODUCTION")


def _embedded_secret_key() -> str:
    """Read, or create once, the local secret of the embedded default."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
        print(f"revive: generated a local SECRET_KEY in {path}", file=sys.stderr)
    return path.read_text().strip()


# No default in production.
SECRET_KEY = env.str("SECRET_KEY") if PRODUCTION else env.str("SECRET_KEY", default="") or _embedded_secret_key()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
PUBLIC_BASE_URL = env.str("REVIVE_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "whitenoise.runserver_nostatic",  # runserver serves static files through whitenoise too, as gunicorn does
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",  # its templates and static files: the API docs use the bundled Swagger UI, not a CDN
    "audit",
    "cases",
    "console",  # the operator console: the admin of cases (which imports nothing of it)
    "operations",  # what operators of the platform run: the doctor, the Restate recovery routes, their panel
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.socialaccount.providers.auth0",
    "reauth",  # after allauth: its admin module takes allauth's models out of the console
]
# The recovery lab (fault injection, stand-ins, demo keys) is a development tool, not part of the product: with
# REVIVE_PRODUCTION=1 it is not installed and /lab/ does not exist. Its identity provider (lab.idp) is never installed
# here: it runs as a process of its own under lab.idp.settings.
LAB_ENABLED = not PRODUCTION
if LAB_ENABLED:
    INSTALLED_APPS.append("lab")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files in every mode, compressed and cached
    "revive_site.middleware.WorkContextMiddleware",  # request id, trace id and run id for logs and audit
    "revive_site.middleware.OperationsAuditMiddleware",
    "revive_site.middleware.ApiErrorShapeMiddleware",
    "revive_site.middleware.ApiBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

# The worker API (/api/v1/, revive_site.wsgi) answers API keys only: it skips what serves browsers (static files,
# sessions, CSRF, the signed-in user); request id and trace context, the error shape and the body limit stay.
WORKER_API_SKIPPED_MIDDLEWARE = {
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
}

ROOT_URLCONF = "revive_site.urls"
WSGI_APPLICATION = "revive_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db("DATABASE_URL")}
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "revive.sqlite3",
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # `manage.py collectstatic` (scripts/setup runs it) fills it
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise looks here at start, collected or not
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, pre-compressed names (served with a year's Cache-Control) once collectstatic has run; the
    # apps' own files under their plain names before that (revive_site.staticfiles).
    "staticfiles": {"BACKEND": "revive_site.staticfiles.CollectedOrFoundStorage"},
}
# Also serve files straight from the apps (uncompressed, short-cached) so a fresh checkout is styled at once.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "reauth.views.csrf_failure"
CSRF_COOKIE_HTTPONLY = False
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION

# --- HTTPS in production ------------------------------------------------------
# Plain HTTP is redirected to HTTPS and browsers are told to stay on HTTPS (HSTS). Where TLS is terminated at a
# proxy or load balancer, REVIVE_TLS_PROXY_HEADER names the header it sets on HTTPS requests (e.g.
# "X-Forwarded-Proto"; the proxy must set it itself, never pass a client's through), so Django knows the request
# was HTTPS and does not redirect it again.
SECURE_SSL_REDIRECT = env.bool("REVIVE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("REVIVE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("REVIVE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("REVIVE_HSTS_PRELOAD", default=PRODUCTION)
_tls_proxy_header = env.str("REVIVE_TLS_PROXY_HEADER", default="")
if _tls_proxy_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _tls_proxy_header.upper().replace("-", "_"), "https")

# --- Celery -----------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = REDIS_URL or "memory://"
# Kombu's Redis transport with the repair that keeps the worker alive through a Redis restart (revive_site/broker.py).
CELERY_BROKER_TRANSPORT = "revive_site.broker:Transport" if REDIS_URL else None
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=90)
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker outlives a Redis restart: it reconnects for as long as Redis is away (Celery's default gives up after
# 100 attempts and exits), and a channel error after a reconnect is retried like a connection error instead of
# ending the worker (with CELERY_BROKER_TRANSPORT above). `scripts/serve` restarts a worker that dies anyway.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# Celery's Django fix-up closes the database connection before and after every task unless this is set (then only
# every N tasks); revive_site.celery closes it instead when Django would (CONN_MAX_AGE, errors, health checks), so a
# worker keeps one connection across tasks instead of connecting for each.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# One named queue; the worker consumes it without -Q. Tests give each session its own.
CELERY_TASK_DEFAULT_QUEUE = env.str("REVIVE_CELERY_QUEUE", default="revive")
# Redis re-delivers an unacknowledged task only after this; the resume sweep (below) catches lost work sooner.
# Keepalive and a periodic PING find a half-open connection to a restarted Redis instead of waiting on it forever.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    "socket_keepalive": True,
    "health_check_interval": 10,
}
# `celery -A revive_site beat` (or `worker -B` on a single machine) runs these; it keeps its state in var/.
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule"))
CELERY_BEAT_SCHEDULE = {
    "reap-stale-actions": {"task": "cases.reap_stale_actions", "schedule": 60.0},
    "expire-reconnect-requests": {"task": "reauth.expire_reconnect_requests", "schedule": 60.0},
    # The transactional outbox's sweep (cases.outbox) and the watchdog of resumed runs (cases.pipeline).
    "outbox-sweep": {"task": "cases.outbox_sweep", "schedule": env.float("REVIVE_OUTBOX_SWEEP_INTERVAL", default=15.0)},
    "pipeline-watch": {"task": "cases.pipeline_watch", "schedule": env.float("REVIVE_WATCH_INTERVAL", default=15.0)},
    "scalekit-accounts-poll": {"task": "reauth.scalekit_accounts_poll", "schedule": 60.0},
    # Operator notifications of cases open longer than REVIVE_CASE_STALE_MINUTES (operations.notifications).
    "notify-stale-cases": {
        "task": "cases.notify_stale_cases",
        "schedule": env.float("REVIVE_CASE_STALE_SCAN_INTERVAL", default=60.0),
    },
}

# --- Revive -----------------------------------------------------------------
# Seconds an `executing` action stays locked without a heartbeat: the SDK extends the lock every third of it while
# `execute` runs (POST .../heartbeat), so a dead worker's action is known -- reaped to `ambiguous`, or noticed by the
# next begin -- within this, and ACTION_IN_PROGRESS tells the others when to ask again (`retry_after`).
REVIVE_ACTION_LOCK_TIMEOUT = env.int("REVIVE_ACTION_LOCK_TIMEOUT", default=60)
# Largest JSON body the worker API accepts.
REVIVE_MAX_BODY_BYTES = env.int("REVIVE_MAX_BODY_BYTES", default=256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REVIVE_MAX_BODY_BYTES
# Seconds a process trusts an API key it has read (no database round trip per call meanwhile). A key revoked
# or changed elsewhere is refused or re-read within this window; the process that revokes it refuses it at once.
REVIVE_API_KEY_CACHE_SECONDS = env.float("REVIVE_API_KEY_CACHE_SECONDS", default=5.0)
# Default backoff when a transient failure has no Retry-After.
REVIVE_TRANSIENT_BACKOFF_SECONDS = env.float("REVIVE_TRANSIENT_BACKOFF_SECONDS", default=5.0)
REVIVE_REFRESH_CLAIM_SECONDS = env.float(
    "REVIVE_REFRESH_CLAIM_SECONDS", default=30.0
)  # how long one refresh holds its claim
REVIVE_REFRESH_POLL_SECONDS = env.float(
    "REVIVE_REFRESH_POLL_SECONDS", default=0.2
)  # how soon a waiting worker asks again

# --- Resume (cases.resume, cases.runtimes) ----------------------------------
# Server-side reconcilers by action key (exact, or an fnmatch pattern such as "send_exec_*"): dotted paths to
# callables taking a cases.resume.ReconcileRequest and returning a cases.resume.ReconcilerFinding.
REVIVE_RECONCILERS: dict[str, str] = {}
# Resume a case whose ambiguous actions have no server-side reconciler and leave them to the resumed worker's
# `reconcile` callback (begin answers `reconcile`, so none executes while ambiguous). Off: they wait for an operator.
REVIVE_RECONCILE_IN_WORKER = env.bool("REVIVE_RECONCILE_IN_WORKER", default=True)
# Bounded retries of transient resume and reconcile failures (exponential backoff, capped); then `resume_failed`.
REVIVE_RESUME_MAX_RETRIES = env.int("REVIVE_RESUME_MAX_RETRIES", default=10)
REVIVE_RESUME_BACKOFF_FIRST = env.float("REVIVE_RESUME_BACKOFF_FIRST", default=0.1)
REVIVE_RESUME_BACKOFF_MAX = env.float("REVIVE_RESUME_BACKOFF_MAX", default=60.0)
# A delivery's claim on its run, renewed every third of this while the delivery runs (cases.outbox.claim_renewed):
# a worker killed mid-delivery frees the run within this long; a live one keeps it however long the run takes.
REVIVE_RESUME_CLAIM_SECONDS = env.int("REVIVE_RESUME_CLAIM_SECONDS", default=45)
# The outbox (cases.outbox): a step still pending this long after it was owed (or after its retry was due) is
# dispatched again by the sweep; a dispatch holds its row this long, renewed every third of it while it runs.
REVIVE_OUTBOX_GRACE_SECONDS = env.int("REVIVE_OUTBOX_GRACE_SECONDS", default=30)
REVIVE_OUTBOX_CLAIM_SECONDS = env.int("REVIVE_OUTBOX_CLAIM_SECONDS", default=45)
# Rows owed together (every run of a released case) go out as one dispatch message per this many rows: enough to
# make a message's overhead negligible, few enough that a mass outage spreads over every worker process (a resumed
# LangGraph run executes inside its delivery); a batch starts no new row after this many seconds (the rest goes out
# again as a new message), well inside the task's time limit (CELERY_TASK_SOFT_TIME_LIMIT).
REVIVE_OUTBOX_BATCH_SIZE = env.int("REVIVE_OUTBOX_BATCH_SIZE", default=25)
REVIVE_OUTBOX_BATCH_SECONDS = env.float("REVIVE_OUTBOX_BATCH_SECONDS", default=20.0)
# The watchdog (cases.pipeline.runs_watch): a resumed run with no ledger progress for this long is re-driven
# (expired actions reaped and reconciled, resume delivered again); after this many re-drives its case is
# `resume_failed` with the reason.
REVIVE_RUN_STALL_SECONDS = env.int("REVIVE_RUN_STALL_SECONDS", default=180)
REVIVE_RESUME_MAX_ATTEMPTS = env.int("REVIVE_RESUME_MAX_ATTEMPTS", default=3)
# When a resume waits for an operator in `awaiting_approval` (cases.services.resume_approval_required):
# `never`; `ambiguous` (an action of the case's runs was reconciled by hand or without evidence); `always`.
REVIVE_RESUME_APPROVAL = env.str("REVIVE_RESUME_APPROVAL", default="ambiguous")
if REVIVE_RESUME_APPROVAL not in ("never", "ambiguous", "always"):
    raise ImproperlyConfigured(
        f"REVIVE_RESUME_APPROVAL must be never, ambiguous or always, not {REVIVE_RESUME_APPROVAL!r}"
    )
REVIVE_RUNTIME_ADAPTERS = {
    "langgraph": "cases.runtimes.langgraph.LangGraphAdapter",
    "temporal": "cases.runtimes.temporal.TemporalAdapter",
    "restate": "cases.runtimes.restate.RestateAdapter",
    "langgraph-server": "cases.runtimes.langgraph_server.LangGraphServerAdapter",
}
# LangGraph graphs Revive resumes in its own worker, by the name runs register as runtime_ref["graph"]:
# dotted paths ("package.module:attribute") to a StateGraph builder or a function returning one.
REVIVE_LANGGRAPH_GRAPHS: dict[str, str] = {
    "lab-briefing": "lab.briefing:briefing",  # the recovery lab's "Nightly executive briefing" (lab/)
}
# Where checkpoints live: empty means the database above when it is PostgreSQL, else var/langgraph.sqlite3.
REVIVE_LANGGRAPH_CHECKPOINT_URL = env.str("REVIVE_LANGGRAPH_CHECKPOINT_URL", default="")
# The LangGraph Agent Server (langgraph-api: `langgraph dev`, a LangSmith deployment) whose threads runs registered as
# runtime "langgraph-server" live on; Revive resumes them over its HTTP API (cases.runtimes.langgraph_server). The key
# is sent as `x-api-key` when set (deployments that require one).
REVIVE_LANGGRAPH_SERVER_URL = env.str("REVIVE_LANGGRAPH_SERVER_URL", default="http://127.0.0.1:2024")
REVIVE_LANGGRAPH_SERVER_API_KEY = env.str("REVIVE_LANGGRAPH_SERVER_API_KEY", default="")
REVIVE_LANGGRAPH_SERVER_TIMEOUT = env.float("REVIVE_LANGGRAPH_SERVER_TIMEOUT", default=10.0)
TEMPORAL_ADDRESS = env.str("TEMPORAL_ADDRESS", default="127.0.0.1:7233")
TEMPORAL_NAMESPACE = env.str("TEMPORAL_NAMESPACE", default="default")
TEMPORAL_RPC_TIMEOUT = env.float("TEMPORAL_RPC_TIMEOUT", default=10.0)
RESTATE_RESUME_TIMEOUT = env.float("RESTATE_RESUME_TIMEOUT", default=10.0)
# A run parked on a case that is abandoned (or rejected), and blocked by no other open case, is told so through its
# runtime adapter (Temporal signal, LangGraph resume value) after this many seconds, so that it ends instead of
# waiting forever. Until then `case_reopen` can take the case back and the run is never told; once told, it is
# `abandoned` in Revive and no reopen brings it back. A delayed step needs the Celery worker with beat.
REVIVE_ABANDON_NOTICE_DELAY_SECONDS = env.float("REVIVE_ABANDON_NOTICE_DELAY_SECONDS", default=900.0)
# Four eyes: the operator who reconciled a case's action by hand, or resent the owner link that was used, may not
# approve that case's resume (cases.services.case_four_eyes).
REVIVE_FOUR_EYES = env.bool("REVIVE_FOUR_EYES", default=False)
# Links out from the case page: URL templates per runtime (langgraph, temporal, restate) and per provider (entra,
# auth0, nango, ...), formatted with the run's and connection's fields, e.g.
# {"temporal": "https://temporal.example/namespaces/default/workflows/{workflow_id}/{run_id}"}.
REVIVE_RUNTIME_UI_URLS = env.json("REVIVE_RUNTIME_UI_URLS", default={})
REVIVE_PROVIDER_ADMIN_URLS = env.json("REVIVE_PROVIDER_ADMIN_URLS", default={})

# --- Operator notifications (operations.notifications; docs/console.md "Notifications") -----------------------
# A case awaiting approval, a resume that failed, and a case open longer than REVIVE_CASE_STALE_MINUTES (0: never)
# are e-mailed to REVIVE_OPERATOR_EMAILS and POSTed to REVIVE_OPERATOR_WEBHOOK_URL (Slack-compatible JSON, signed
# with HMAC-SHA256 under REVIVE_OPERATOR_WEBHOOK_SECRET). A namespace may name its own recipients and webhook URL.
REVIVE_OPERATOR_EMAILS = env.list("REVIVE_OPERATOR_EMAILS", default=[])
REVIVE_OPERATOR_WEBHOOK_URL = env.str("REVIVE_OPERATOR_WEBHOOK_URL", default="")
REVIVE_OPERATOR_WEBHOOK_SECRET = env.str("REVIVE_OPERATOR_WEBHOOK_SECRET", default="")
REVIVE_OPERATOR_WEBHOOK_TIMEOUT = env.float("REVIVE_OPERATOR_WEBHOOK_TIMEOUT", default=5.0)
REVIVE_OPERATOR_NOTIFY_MAX_ATTEMPTS = env.int("REVIVE_OPERATOR_NOTIFY_MAX_ATTEMPTS", default=6)
REVIVE_CASE_STALE_MINUTES = env.int("REVIVE_CASE_STALE_MINUTES", default=60)
if REVIVE_OPERATOR_WEBHOOK_URL and not REVIVE_OPERATOR_WEBHOOK_SECRET:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "REVIVE_OPERATOR_WEBHOOK_URL is set: REVIVE_OPERATOR_WEBHOOK_SECRET (the HMAC key) is required"
    )

# --- E-mail: the console backend unless EMAIL_URL is set (smtp+tls://user:pass@host:587) -----------------
if env.str("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="reauth.mail.StderrConsoleEmailBackend")  # console, on stderr
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Revive <revive@localhost>")

# --- Owner reconnect (reauth) and its sign-in through django-allauth ---------
REVIVE_RECONNECT_TTL_SECONDS = env.int("REVIVE_RECONNECT_TTL_SECONDS", default=3600)
REVIVE_RECONNECT_MAX_REFUSALS = env.int("REVIVE_RECONNECT_MAX_REFUSALS", default=5)
REVIVE_RECONNECT_REDIRECT_HOSTS = env.list("REVIVE_RECONNECT_REDIRECT_HOSTS", default=[])
REVIVE_RECONNECT_WEBHOOK_URL = env.str("REVIVE_RECONNECT_WEBHOOK_URL", default="")
REVIVE_RECONNECT_WEBHOOK_SECRET = env.str("REVIVE_RECONNECT_WEBHOOK_SECRET", default="")
REVIVE_RECONNECT_WEBHOOK_TIMEOUT = env.float("REVIVE_RECONNECT_WEBHOOK_TIMEOUT", default=5.0)
if REVIVE_RECONNECT_WEBHOOK_URL and not REVIVE_RECONNECT_WEBHOOK_SECRET:
    raise ImproperlyConfigured(
        "REVIVE_RECONNECT_WEBHOOK_URL is set: REVIVE_RECONNECT_WEBHOOK_SECRET (the HMAC key) is required"
    )
REVIVE_ENTRA_AUTHORITY = env.str("REVIVE_ENTRA_AUTHORITY", default="https://login.microsoftonline.com")
# Broker-held connections (reauth.brokers): the broker keeps the grant; Revive keeps references and proves identity.
REVIVE_NANGO_URL = env.str("REVIVE_NANGO_URL", default="https://api.nango.dev")
REVIVE_NANGO_CONNECT_URL = env.str("REVIVE_NANGO_CONNECT_URL", default="https://connect.nango.dev")
REVIVE_NANGO_SECRET_KEY = env.str("REVIVE_NANGO_SECRET_KEY", default="")
REVIVE_NANGO_WEBHOOK_SIGNING_KEY = env.str("REVIVE_NANGO_WEBHOOK_SIGNING_KEY", default="")
# {"<namespace>": "<signing key>"} for namespaces whose connections live in another Nango environment.
REVIVE_NANGO_WEBHOOK_SIGNING_KEYS = env.json("REVIVE_NANGO_WEBHOOK_SIGNING_KEYS", default={})
REVIVE_SCALEKIT_ENVIRONMENT_URL = env.str("REVIVE_SCALEKIT_ENVIRONMENT_URL", default="")
REVIVE_SCALEKIT_CLIENT_ID = env.str("REVIVE_SCALEKIT_CLIENT_ID", default="")
REVIVE_SCALEKIT_CLIENT_SECRET = env.str("REVIVE_SCALEKIT_CLIENT_SECRET", default="")
REVIVE_SCALEKIT_POLL_BATCH = env.int("REVIVE_SCALEKIT_POLL_BATCH", default=100)
REVIVE_BROKER_TIMEOUT = env.float("REVIVE_BROKER_TIMEOUT", default=10.0)
REVIVE_BROKER_MAX_ATTEMPTS = env.int("REVIVE_BROKER_MAX_ATTEMPTS", default=8)
REVIVE_CREDENTIAL_CUSTODY = env.str("REVIVE_CREDENTIAL_CUSTODY", default="reauth.custody.DatabaseCustody")
# Auth0 Token Vault (connections of provider auth0_token_vault): {"domain", "client_id", "client_secret",
# "connections": {"<auth0 connection>": {"userinfo_url", "issuer", "scopes": [...]}}} -- see reauth/relink.py.
REVIVE_AUTH0_TOKEN_VAULT = env.json("REVIVE_AUTH0_TOKEN_VAULT", default={})

from reauth.provider_settings import socialaccount_providers  # noqa: E402  (pure: no models, no environment)

if PRODUCTION and env.str("REVIVE_LAB_IDP_URL", default=""):
    raise ImproperlyConfigured(
        "REVIVE_LAB_IDP_URL is set with REVIVE_PRODUCTION=1: the lab's sign-in app is for the recovery lab only "
        "and cannot be enabled in production"
    )

SOCIALACCOUNT_PROVIDERS = socialaccount_providers(
    entra_client_id=env.str("REVIVE_ENTRA_CLIENT_ID", default=""),
    entra_client_secret=env.str("REVIVE_ENTRA_CLIENT_SECRET", default=""),
    entra_tenants=env.list("REVIVE_ENTRA_TENANTS", default=[]),
    entra_authority=REVIVE_ENTRA_AUTHORITY,
    entra_scope=env.list("REVIVE_ENTRA_SCOPE", default=[]),
    entra_client_capabilities=env.list("REVIVE_ENTRA_CLIENT_CAPABILITIES", default=["cp1"]),
    auth0_url=env.str("REVIVE_AUTH0_URL", default=""),
    auth0_client_id=env.str("REVIVE_AUTH0_CLIENT_ID", default=""),
    auth0_client_secret=env.str("REVIVE_AUTH0_CLIENT_SECRET", default=""),
    auth0_scope=env.list("REVIVE_AUTH0_SCOPE", default=[]),
    oidc_apps=env.json("REVIVE_OIDC_APPS", default=[]),
    lab_idp_url=env.str("REVIVE_LAB_IDP_URL", default=""),
    lab_client_id=env.str("REVIVE_LAB_IDP_CLIENT_ID", default=""),
    lab_client_secret=env.str("REVIVE_LAB_IDP_CLIENT_SECRET", default=""),
)
SOCIALACCOUNT_ADAPTER = "reauth.adapter.ReconnectSocialAccountAdapter"
ACCOUNT_ADAPTER = "reauth.adapter.NoSignupAccountAdapter"
SOCIALACCOUNT_STORE_TOKENS = False  # the grant goes to credential custody, never to allauth's SocialToken table
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_REQUESTS_TIMEOUT = env.int("SOCIALACCOUNT_REQUESTS_TIMEOUT", default=10)

# --- Restate (operator routes and runtime adapter) ---------------------------
RESTATE_ADMIN_URL = env.str("RESTATE_ADMIN_URL", default="http://127.0.0.1:9070")
RESTATE_INGRESS_URL = env.str("RESTATE_INGRESS_URL", default="http://127.0.0.1:8080")
RESTATE_PROBE_TIMEOUT = env.float("RESTATE_PROBE_TIMEOUT", default=3.0)
RESTATE_DRAIN_TIMEOUT = env.float("RESTATE_DRAIN_TIMEOUT", default=30.0)
# Write calls to the admin API (registration includes Restate contacting the service).
RESTATE_ADMIN_TIMEOUT = env.float("RESTATE_ADMIN_TIMEOUT", default=30.0)

# --- Doctor (manage.py revive_doctor, GET /api/v2/admin/operator/doctor, the console's panel) ----------------
# The runtimes this deployment uses, which the doctor probes. Default: those configured here -- LangGraph with
# REVIVE_LANGGRAPH_CHECKPOINT_URL, Temporal with TEMPORAL_ADDRESS, Restate with RESTATE_ADMIN_URL, the Agent Server with
# REVIVE_LANGGRAPH_SERVER_URL -- so none on the
# embedded default, and never a runtime nobody deployed.
REVIVE_RUNTIMES = env.list(
    "REVIVE_RUNTIMES",
    default=[
        name
        for name, variable in (
            ("langgraph", "REVIVE_LANGGRAPH_CHECKPOINT_URL"),
            ("temporal", "TEMPORAL_ADDRESS"),
            ("restate", "RESTATE_ADMIN_URL"),
            ("langgraph-server", "REVIVE_LANGGRAPH_SERVER_URL"),
        )
        if env.str(variable, default="")
    ],
)
# Seconds per probe call (connect, query); the doctor answers within twice that, or the worker window plus it.
REVIVE_DOCTOR_PROBE_TIMEOUT = env.float("REVIVE_DOCTOR_PROBE_TIMEOUT", default=3.0)
# How long the Celery probe waits for workers to answer its broadcast: busy workers answer between tasks.
REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT = env.float("REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT", default=5.0)

# --- Metrics and tracing ---------------------------------------------------
# /metrics (Prometheus) is served only with a token, and then only to `Authorization: Bearer <token>`.
REVIVE_METRICS_TOKEN = env.str("REVIVE_METRICS_TOKEN", default="")
# Set for gunicorn with several workers and for Celery (prometheus_client reads it itself): every process writes its
# counters to files in this directory and /metrics sums them. One empty directory per machine, emptied at each start.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# OpenTelemetry tracing (Django, Celery, psycopg, httpx) is on only when an OTLP/HTTP endpoint is set; the SDK's own
# OTEL_* variables (service name, headers, sampler) apply. Unset: nothing of OpenTelemetry is even imported.
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="revive")

# `plain` (one readable line) or `json` (one object per line: time, level, logger, message, request_id, trace_id,
# namespace, run_id, case_id, extras; revive_site.logging). JSON by default in production.
REVIVE_LOG_FORMAT = env.str("REVIVE_LOG_FORMAT", default="json" if PRODUCTION else "plain")
if REVIVE_LOG_FORMAT not in ("plain", "json"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"REVIVE_LOG_FORMAT must be plain or json, not {REVIVE_LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "revive_site.logging.ReviveJsonFormatter"},
    },
    # redaction first: the work-context fields it adds are ids, never secrets
    "filters": {
        "redact_credentials": {"()": "reauth.logging.RedactCredentialsFilter"},
        "work_context": {"()": "revive_site.logging.WorkContextFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": REVIVE_LOG_FORMAT,
            "filters": ["redact_credentials", "work_context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # request lines carry reconnect link tokens and OAuth codes: through the redacting handler
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # gunicorn's own logs (revive_site.gunicorn_conf routes them here): the same handler
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO"), "propagate": False},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
