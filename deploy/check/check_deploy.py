"""Offline checks of the deployment files (run by scripts/check-deploy).

No Docker engine and no cluster are needed. What it checks:

- every YAML file parses (docker-compose.yml, deploy/compose/*.yml, deploy/k8s/**.yaml);
- docker-compose.yml against the Compose Specification schema (check-jsonschema's vendored copy),
  then: every container has a health check; every depends_on target exists, has a health check
  and is waited for with `condition: service_healthy`; no dependency cycle; bind-mounted files
  exist; named volumes are declared; the three services are built from the Dockerfile with
  SERVICE set to their own name; every SALES_/PRODUCT_/DELIVERY_ variable is one that service
  reads (names taken from the Rust config sources), every other variable is one the code or the
  AWS SDK reads; listen addresses are 0.0.0.0 with the published port, health check and
  Prometheus target on that same port; URLs between services name a compose service and its port;
  the broker settings pass the services' own start-up rule and name the init script's topic/queue;
- the LocalStack init script's defaults equal the code's (topic, queue, maxReceiveCount,
  visibility timeout, the event types product consumes);
- the Dockerfile's shape (stages, cargo-chef, SQLX_OFFLINE, ARG SERVICE, non-root USER);
- deploy/k8s: the base and every overlay rendered with `kubectl kustomize` (when kubectl is
  installed), validated with kubernetes-validate (strict: unknown fields are errors) against
  Kubernetes 1.30 and 1.37 schemas, then: selectors match pod labels, probes hit
  /health/ready and /health/live on a declared port, requests and limits are set, referenced
  ConfigMaps/Secrets/ServiceAccounts exist, the listen port in the ConfigMap equals the container
  port and the Service's, HPAs and PDBs point at Deployments, configuration keys are read by the
  code (as above), and inter-service URLs name a Service and its port;
- service credentials: product and delivery are given their accepted service tokens
  ({P}SERVICE_TOKEN) and sales the token it sends each of them (SALES_{PRODUCT,DELIVERY}_SERVICE_TOKEN),
  one of the accepted ones, in compose and (from Secrets, never ConfigMaps) in Kubernetes, where a
  NetworkPolicy per internal service admits sales' pods to its port and otherwise only peers in other,
  named namespaces (the metrics scraper);
- `bash -n` on every shell script.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"sales": "SALES_", "product": "PRODUCT_", "delivery": "DELIVERY_"}
K8S_VERSIONS = ["1.30.0", "1.37.0"]

failures = []
notes = []


def ok(msg):
    print(f"  ok    {msg}")


def fail(msg):
    failures.append(msg)
    print(f"  FAIL  {msg}")


def note(msg):
    notes.append(msg)
    print(f"  note  {msg}")


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        fail(msg + (f": {detail}" if detail else ""))
    return cond


def section(title):
    print(f"\n{title}")


# ---------------------------------------------------------------------------
# What the code reads


def code_variables():
    """{service: {full variable name: how it is read}}, from the Rust config sources.

    "How" is the platform::config::Env method (flag, millis, positive, parse, string, optional,
    socket_addr, http_url, postgres_url), so values can be checked the way the code parses them.
    """
    reader = re.compile(
        r"\benv\s*\.\s*(string|optional|parse|positive|flag|millis|socket_addr|http_url|postgres_url)"
        r"\s*\(\s*&?\s*\"([A-Z0-9_]+)\"",
        re.S,
    )
    platform_src = (ROOT / "crates/platform/src/config.rs").read_text()
    platform_keys = {k: m for m, k in reader.findall(platform_src)}
    outbox_src = (ROOT / "crates/outbox/src/lib.rs").read_text()
    config_part, _, breaker_part = outbox_src.partition("pub fn broker_breaker")
    outbox_keys = {k: m for m, k in reader.findall(config_part)}
    outbox_breaker_keys = {k: m for m, k in reader.findall(breaker_part.split("#[cfg(test)]")[0])}
    out = {}
    for service, prefix in SERVICES.items():
        src = (ROOT / f"services/{service}/src/config.rs").read_text()
        keys = {k: m for m, k in reader.findall(src)}
        # sales' tokens for its peers: service_token(env, "X") reads env.optional(X).
        keys.update({k: "optional" for k in re.findall(r"\bservice_token\(\s*env\s*,\s*\"([A-Z0-9_]+)\"", src)})
        if "ServerConfig::from_env" in src and "DatabaseConfig::from_env" in src:
            keys.update(platform_keys)
        # The outbox crate's settings (BROKER_*, OUTBOX_*, and BREAKER_BROKER_* for a service
        # whose only breaker is the relay's), read with the service's prefix.
        if re.search(r"\b(outbox::Config|OutboxConfig)::from_env\(", src):
            keys.update(outbox_keys)
        # Breakers: `let key = |k: &str| format!("BREAKER_{dep}_{k}")` with breaker(env, "DEP", ..),
        # read as env.positive(&key("X")) / env.millis(&key("X_MS")).
        fmt = re.search(r"format!\(\"([A-Z_]+)_\{dep\}_\{k\}\"\)", src)
        if fmt:
            deps = re.findall(r"\bbreaker\(\s*env\s*,\s*\"([A-Z]+)\"", src)
            suffixes = re.findall(r"\benv\s*\.\s*(\w+)\(\s*&key\(\s*\"([A-Z0-9_]+)\"\s*\)", src, re.S)
            for d in deps:
                for method, suffix in suffixes:
                    if method != "name":  # env.name(..) only spells the name in an error
                        keys[f"{fmt.group(1)}_{d}_{suffix}"] = method
        if re.search(r"\boutbox::broker_breaker\(", src):
            keys.update(outbox_breaker_keys)
        out[service] = {prefix + k: m for k, m in keys.items()}
    return out


def standard_variables():
    """Variables without a service prefix, with how the code reads them."""
    sources = "\n".join(
        p.read_text() for d in ("crates", "services") for p in (ROOT / d).rglob("src/**/*.rs")
    )
    known = {}
    if "aws_config::defaults" in sources:
        for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            known[name] = "the AWS SDK (aws_config::defaults)"
    if "EnvFilter::try_from_default_env" in sources:
        known["RUST_LOG"] = "tracing's EnvFilter"
    if re.search(r"env::var\(\s*\"LOG_FORMAT\"", sources):
        known["LOG_FORMAT"] = "platform::telemetry"
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in sources or "opentelemetry_otlp" in sources:
        known["OTEL_EXPORTER_OTLP_ENDPOINT"] = "the OTLP exporter"
    else:
        known["OTEL_EXPORTER_OTLP_ENDPOINT"] = None  # accepted: read by the tracing export to come
    return known


def check_variables(where, service, names, code_vars, std_vars):
    prefix = SERVICES[service]
    bad = []
    pending = []
    for name in sorted(names):
        if name.startswith(tuple(SERVICES.values())):
            if not name.startswith(prefix) or name not in code_vars[service]:
                bad.append(name)
        elif name not in std_vars:
            bad.append(name)
        elif std_vars[name] is None:
            pending.append(name)
    check(not bad, f"{where}: all {len(names)} variables of {service} are read by the code", ", ".join(bad))
    for name in pending:
        note(f"{where}: {name} is not read by the code yet (the tracing export of a later issue)")


FLAG_VALUES = {"1", "0", "true", "false", "yes", "no", "on", "off"}


def check_values(where, service, env, code_vars):
    """The values parse the way platform::config::Env parses them."""
    bad = []
    for name, value in env.items():
        value = str(value).strip()
        method = code_vars[service].get(name)
        if method == "flag" and value.lower() not in FLAG_VALUES:
            bad.append(f"{name}={value} (true or false)")
        elif method in ("millis", "positive") and (not value.isdigit() or int(value) <= 0):
            bad.append(f"{name}={value} (an integer greater than 0)")
        elif method == "parse" and not re.fullmatch(r"-?\d+", value):
            bad.append(f"{name}={value} (an integer)")
        elif method == "http_url" and (urlparse(value).scheme not in ("http", "https") or not urlparse(value).hostname):
            bad.append(f"{name}={value} (an http:// URL)")
        elif method == "postgres_url":
            u = urlparse(value)
            if u.scheme not in ("postgres", "postgresql") or not u.path.strip("/"):
                bad.append(f"{name}={value} (a postgres:// URL naming a database)")
        elif method == "socket_addr" and not re.fullmatch(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}", value):
            bad.append(f"{name}={value} (ip:port, e.g. 0.0.0.0:8080)")
        if name.endswith("_ERROR_THRESHOLD_PERCENTAGE") and value.isdigit() and int(value) > 100:
            bad.append(f"{name}={value} (1 to 100)")
    check(not bad, f"{where}: values parse as the code reads them", "; ".join(bad))


def broker_rule(where, env):
    """sales and delivery (the outbox crate) refuse to start with the broker on, provisioning
    off and no topic ARN."""
    flag = lambda k, d: str(env.get(k, d)).strip().lower() in ("1", "true", "yes", "on")
    for p in ("SALES_", "DELIVERY_"):
        if p + "LISTEN_ADDR" in env and flag(p + "BROKER_ENABLED", "false") and not flag(
            p + "BROKER_PROVISION", "false"
        ):
            check(bool(env.get(p + "BROKER_TOPIC_ARN")), f"{where}: {p}BROKER_TOPIC_ARN set (broker on, provisioning off)")


# ---------------------------------------------------------------------------
# Service credentials


TOKEN_PAIRS = [("product", "PRODUCT_SERVICE_TOKEN", "SALES_PRODUCT_SERVICE_TOKEN"),
               ("delivery", "DELIVERY_SERVICE_TOKEN", "SALES_DELIVERY_SERVICE_TOKEN")]


def resolve(value):
    """A compose value with ${VAR:-default} interpolations replaced by their defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def check_service_tokens(where, envs, secret_keys=None):
    """product and delivery accept a service token; sales sends one of the accepted ones."""
    sales = envs.get("sales", {})
    for service, accepted_key, sent_key in TOKEN_PAIRS:
        accepted = [t.strip() for t in resolve(envs.get(service, {}).get(accepted_key, "")).split(",") if t.strip()]
        sent = resolve(sales.get(sent_key, "")).strip()
        check(bool(accepted), f"{where} {service}: {accepted_key} is set (unset refuses sales)")
        check(bool(sent), f"{where} sales: {sent_key} is set")
        check(sent in accepted, f"{where} sales → {service}: {sent_key} is one of {service}'s {accepted_key}")
        if secret_keys is not None:
            check(accepted_key in secret_keys.get(service, set()), f"{where} {service}: {accepted_key} comes from a Secret")
            check(sent_key in secret_keys.get("sales", set()), f"{where} sales: {sent_key} comes from a Secret")


def check_network_policies(where, by_kind, deployments):
    """Each internal service's pods admit, in their namespace, sales' pods only."""
    policies = by_kind.get("NetworkPolicy", {})
    for service in ("product", "delivery"):
        dep = deployments.get(service)
        if dep is None:
            continue
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        c = dep["spec"]["template"]["spec"]["containers"][0]
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        mine = [
            p for p in policies.values()
            if (p["spec"].get("podSelector") or {}).get("matchLabels")
            and all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())
        ]
        if not check(bool(mine), f"{where} {service}: a NetworkPolicy selects its pods"):
            continue
        for policy in mine:
            name = policy["metadata"]["name"]
            spec = policy["spec"]
            check("Ingress" in spec.get("policyTypes", []), f"{where} NetworkPolicy {name}: restricts Ingress")
            rules = spec.get("ingress") or []
            admits_sales = False
            for rule in rules:
                peers = rule.get("from") or []
                ports = [named.get(p.get("port"), p.get("port")) for p in rule.get("ports") or []]
                check(bool(peers), f"{where} NetworkPolicy {name}: no rule admits every source")
                check(ports and all(port in named.values() for port in ports), f"{where} NetworkPolicy {name}: each rule names the container port", str(ports))
                for peer in peers:
                    pod = (peer.get("podSelector") or {}).get("matchLabels") or {}
                    ns = peer.get("namespaceSelector")
                    if "ipBlock" in peer:
                        fail(f"{where} NetworkPolicy {name}: an ipBlock peer ({peer['ipBlock']}) admits more than sales")
                    elif ns is None:
                        ok_sales = pod == {"app.kubernetes.io/name": "sales"}
                        check(ok_sales, f"{where} NetworkPolicy {name}: the only pods admitted from its namespace are sales'", str(pod))
                        admits_sales |= ok_sales
                    else:
                        check(bool((ns or {}).get("matchLabels")), f"{where} NetworkPolicy {name}: peers of other namespaces are named namespaces", str(ns))
            check(admits_sales, f"{where} NetworkPolicy {name}: admits sales' pods")


# ---------------------------------------------------------------------------
# The LocalStack init script


def script_defaults():
    text = (ROOT / "localstack/init/ready.d/10-sales-events.sh").read_text()
    found = dict(re.findall(r"^([A-Z_]+)=\$\{\1:-([^}]*)\}", text, re.M))
    return found


def outbox_topic_default(config_src):
    """The topic default a service gives the outbox crate's config: `from_env(env, "name")`."""
    m = re.search(r"(?:outbox::Config|OutboxConfig)::from_env\(\s*env\s*,\s*\"([a-z-]+)\"", config_src)
    return m.group(1) if m else None


def check_init_script():
    section("LocalStack init script (localstack/init/ready.d/10-sales-events.sh)")
    path = ROOT / "localstack/init/ready.d/10-sales-events.sh"
    check(os.access(path, os.X_OK), "it is executable (LocalStack runs ready.d/*.sh directly)")
    check((ROOT / "localstack/init/provision.py").is_file(), "its boto3 fallback localstack/init/provision.py exists")
    d = script_defaults()
    product_cfg = (ROOT / "services/product/src/config.rs").read_text()
    sales_cfg = (ROOT / "services/sales/src/config.rs").read_text()

    def code_default(src, key):
        m = re.search(r"\"" + key + r"\"\s*,\s*\"?([A-Za-z0-9_-]+)\"?\s*[),]", src)
        return m.group(1) if m else None

    pairs = [
        ("TOPIC_NAME", outbox_topic_default(sales_cfg), "sales' BROKER_TOPIC_NAME default"),
        ("TOPIC_NAME", code_default(product_cfg, "BROKER_TOPIC_NAME"), "product's BROKER_TOPIC_NAME default"),
        ("QUEUE_NAME", code_default(product_cfg, "BROKER_QUEUE_NAME"), "product's BROKER_QUEUE_NAME default"),
        ("MAX_RECEIVE_COUNT", code_default(product_cfg, "BROKER_MAX_RECEIVE_COUNT"), "PRODUCT_BROKER_MAX_RECEIVE_COUNT default"),
        ("VISIBILITY_TIMEOUT", code_default(product_cfg, "BROKER_VISIBILITY_TIMEOUT_SECS"), "PRODUCT_BROKER_VISIBILITY_TIMEOUT_SECS default"),
    ]
    for var, want, what in pairs:
        check(d.get(var) == want, f"{var} default {d.get(var)!r} = {what} {want!r}")
    consumed_src = (ROOT / "services/product/src/order_events.rs").read_text()
    m = re.search(r"pub const CONSUMED[^=]*=\s*\[([^\]]*)\]", consumed_src)
    consumed = sorted(set(re.findall(r"\"([A-Z_]+)\"", m.group(1)))) if m else None
    script_types = sorted(set(t for t in d.get("EVENT_TYPES", "").split(",") if t))
    check(consumed == script_types, f"EVENT_TYPES {script_types} = product's order_events::CONSUMED {consumed}")
    provision_src = (ROOT / "crates/messaging/src/provision.rs").read_text()
    m = re.search(r"DLQ_RETENTION_SECS: i32 = ([0-9 *]+);", provision_src)
    code_retention = eval(m.group(1)) if m else None  # a product of integer literals
    m = re.search(r"DLQ_RETENTION_SECS=(\d+)", path.read_text())
    check(m and int(m.group(1)) == code_retention, f"DLQ retention {m and m.group(1)} s = messaging's DLQ_RETENTION_SECS {code_retention}")
    d["delivery"] = check_delivery_init_script()
    return d


def check_delivery_init_script():
    """20-delivery-events.sh: delivery's topic and sales' queue, as the code names them, with
    the filter policy sales' provisioning writes (DELIVERY_STATUS_CHANGED but not CREATED)."""
    section("LocalStack init script (localstack/init/ready.d/20-delivery-events.sh)")
    path = ROOT / "localstack/init/ready.d/20-delivery-events.sh"
    check(os.access(path, os.X_OK), "it is executable (LocalStack runs ready.d/*.sh directly)")
    text = path.read_text()
    d = {k: v for k, _, v in re.findall(r"^([A-Z_]+)=\$\{([A-Z_]+):-([^}]*)\}", text, re.M)}
    d.update(dict(re.findall(r"^(EVENT_TYPES|EXCLUDED_STATUSES)=([A-Z_,]+)", text, re.M)))
    sales_cfg = (ROOT / "services/sales/src/config.rs").read_text()
    delivery_cfg = (ROOT / "services/delivery/src/config.rs").read_text()

    def code_default(src, key):
        m = re.search(r"\"" + key + r"\"\s*,\s*\"?([A-Za-z0-9_-]+)\"?\s*[),]", src)
        return m.group(1) if m else None

    pairs = [
        ("TOPIC_NAME", outbox_topic_default(delivery_cfg), "delivery's BROKER_TOPIC_NAME default"),
        ("TOPIC_NAME", code_default(sales_cfg, "DELIVERY_EVENTS_TOPIC_NAME"), "sales' DELIVERY_EVENTS_TOPIC_NAME default"),
        ("QUEUE_NAME", code_default(sales_cfg, "DELIVERY_EVENTS_QUEUE_NAME"), "sales' DELIVERY_EVENTS_QUEUE_NAME default"),
        ("MAX_RECEIVE_COUNT", code_default(sales_cfg, "DELIVERY_EVENTS_MAX_RECEIVE_COUNT"), "SALES_DELIVERY_EVENTS_MAX_RECEIVE_COUNT default"),
        ("VISIBILITY_TIMEOUT", code_default(sales_cfg, "DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS"), "SALES_DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS default"),
    ]
    for var, want, what in pairs:
        check(d.get(var) == want, f"{var} default {d.get(var)!r} = {what} {want!r}")
    consumer = (ROOT / "services/sales/src/workers/delivery_events.rs").read_text()
    contracts = (ROOT / "crates/contracts/src/delivery.rs").read_text()
    m = re.search(r"pub const CONSUMED[^=]*=\s*\[([^\]]*)\]", consumer)
    consts = dict(re.findall(r"pub const ([A-Z_]+): &str = \"([A-Z_]+)\";", contracts))
    consumed = sorted(consts.get(c.strip(), c.strip()) for c in m.group(1).split(",") if c.strip()) if m else None
    check(consumed == sorted(d.get("EVENT_TYPES", "").split(",")), f"EVENT_TYPES {d.get('EVENT_TYPES')} = sales' workers::delivery_events::CONSUMED {consumed}")
    m = re.search(r"pub const NOT_DELIVERED[^=]*=\s*\[([^\]]*)\]", consumer)
    snake = lambda v: re.sub(r"(?<!^)([A-Z])", r"_\1", v).upper()
    excluded = sorted(snake(v) for v in re.findall(r"DeliveryStatus::(\w+)", m.group(1))) if m else None
    check(excluded == sorted(d.get("EXCLUDED_STATUSES", "").split(",")),
          f"EXCLUDED_STATUSES {d.get('EXCLUDED_STATUSES')} = sales' workers::delivery_events::NOT_DELIVERED {excluded} (the filter policy drops them)")
    check('"anything-but"' in (ROOT / "crates/messaging/src/provision.rs").read_text()
          and '"anything-but"' in (ROOT / "localstack/init/provision.py").read_text()
          and '"anything-but"' in (ROOT / "localstack/init/ready.d/10-sales-events.sh").read_text(),
          "the code, provision.py and the CLI path all write the status condition as anything-but")
    return d


# ---------------------------------------------------------------------------
# docker compose


def service_port(env, service):
    addr = str(env.get(SERVICES[service] + "LISTEN_ADDR", ""))
    host, _, port = addr.rpartition(":")
    return host, int(port) if port.isdigit() else None


def health_port(test):
    text = " ".join(test) if isinstance(test, list) else str(test)
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/\S*)?", text)
    return (int(m.group(1)), (m.group(2) or "").strip("'\"")) if m else (None, None)


def check_compose(code_vars, std_vars, init_defaults, venv_bin):
    section("docker compose (docker-compose.yml)")
    path = ROOT / "docker-compose.yml"
    compose = yaml.safe_load(path.read_text())
    ok("docker-compose.yml parses")
    cj = venv_bin / "check-jsonschema"
    r = subprocess.run([str(cj), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)
    check(r.returncode == 0, "valid against the Compose Specification schema", (r.stdout + r.stderr).strip()[-800:])
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        r = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
        check(r.returncode == 0, "docker compose config accepts it", r.stderr.strip()[-800:])
    else:
        note("docker compose is not installed: `docker compose config` not run (schema and checks below instead)")

    services = compose.get("services", {})
    declared_volumes = set((compose.get("volumes") or {}).keys())
    for name, svc in services.items():
        hc = svc.get("healthcheck") or {}
        check(bool(hc.get("test")) and not hc.get("disable"), f"{name}: has a health check")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            fail(f"{name}: depends_on is a list (no health condition); use condition: service_healthy")
            deps = {}
        for dep, spec in deps.items():
            check(dep in services, f"{name} → {dep}: the service exists")
            check((spec or {}).get("condition") == "service_healthy", f"{name} → {dep}: waits for service_healthy")
            check(bool((services.get(dep) or {}).get("healthcheck")), f"{name} → {dep}: the target has a health check")
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                check((ROOT / src).exists(), f"{name}: bind mount {src} exists")
            else:
                check(src in declared_volumes, f"{name}: named volume {src} is declared")

    # Cycles.
    graph = {n: set((s.get("depends_on") or {}).keys()) for n, s in services.items()}
    seen, stack = set(), set()

    def cyclic(n):
        if n in stack:
            return True
        if n in seen:
            return False
        seen.add(n)
        stack.add(n)
        found = any(cyclic(m) for m in graph.get(n, ()) if m in graph)
        stack.discard(n)
        return found

    check(not any(cyclic(n) for n in graph), "depends_on has no cycle")

    # LocalStack.
    ls = services.get("localstack", {})
    ls_env = ls.get("environment") or {}
    check(str(ls.get("image", "")).startswith("localstack/localstack:4.13"), f"localstack image {ls.get('image')} is 4.13")
    check(set(str(ls_env.get("SERVICES", "")).split(",")) == {"sqs", "sns"}, "localstack runs SNS and SQS only")
    mounts = [v.split(":") for v in ls.get("volumes") or [] if isinstance(v, str)]
    check(
        any(
            (ROOT / m[0]).resolve() == (ROOT / "localstack/init").resolve() and m[1] == "/etc/localstack/init"
            or (ROOT / m[0]).resolve() == (ROOT / "localstack/init/ready.d").resolve() and m[1] == "/etc/localstack/init/ready.d"
            for m in mounts
            if len(m) >= 2
        ),
        "localstack mounts localstack/init as its init hooks",
    )
    check(ls_env.get("SQS_ENDPOINT_STRATEGY") == "path", "localstack returns path-style queue URLs (reachable from other containers)")

    # Postgres databases.
    pg = services.get("postgres", {})
    init_sql = "\n".join(
        (ROOT / v.split(":")[0]).read_text()
        for v in pg.get("volumes") or []
        if isinstance(v, str) and v.split(":")[0].endswith(".sql")
    )
    databases = set(re.findall(r"CREATE DATABASE\s+(\w+)", init_sql, re.I))
    check(databases >= set(SERVICES), f"postgres creates the databases {sorted(SERVICES)} on first start", f"found {sorted(databases)}")
    check(str(pg.get("image", "")).startswith("postgres:16"), f"postgres image {pg.get('image')} is 16")

    # The three services.
    ports = {}
    envs = {}
    for service in SERVICES:
        svc = services.get(service)
        if not check(svc is not None, f"{service}: is in compose"):
            continue
        build = svc.get("build") or {}
        check(
            (ROOT / build.get("context", "?") / build.get("dockerfile", "Dockerfile")).is_file()
            and (build.get("args") or {}).get("SERVICE") == service,
            f"{service}: built from the Dockerfile with SERVICE={service}",
        )
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        envs[service] = env
        check_variables(f"compose {service}", service, env.keys(), code_vars, std_vars)
        check_values(f"compose {service}", service, env, code_vars)
        host, port = service_port(env, service)
        ports[service] = port
        check(host == "0.0.0.0", f"{service}: listens on 0.0.0.0 in the container ({env.get(SERVICES[service] + 'LISTEN_ADDR')})")
        published = [str(p).split(":")[-1].split("/")[0] for p in svc.get("ports") or []]
        check(str(port) in published, f"{service}: publishes its listen port {port}", f"ports {svc.get('ports')}")
        hport, hpath = health_port((svc.get("healthcheck") or {}).get("test"))
        check(hport == port and hpath == "/health/ready", f"{service}: health check GETs /health/ready on {port}", f"{hport} {hpath}")
        dburl = urlparse(env.get(SERVICES[service] + "DATABASE_URL", ""))
        check(
            dburl.hostname in services and dburl.path.strip("/") in databases,
            f"{service}: database URL names the postgres service and a created database",
            f"{dburl.hostname}{dburl.path}",
        )
        aws = env.get("AWS_ENDPOINT_URL")
        if aws:
            check(urlparse(aws).hostname in services, f"{service}: AWS_ENDPOINT_URL names a compose service ({aws})")
        broker_rule(f"compose {service}", env)
        deps = set((svc.get("depends_on") or {}).keys())
        check("postgres" in deps, f"{service}: waits for postgres")
        if env.get(SERVICES[service] + "BROKER_ENABLED", "false").lower() in ("1", "true", "yes", "on"):
            check("localstack" in deps, f"{service}: waits for localstack (broker enabled)")

    check_service_tokens("compose", envs)
    sales_env = {k: str(v) for k, v in (services.get("sales", {}).get("environment") or {}).items()}
    for dep in ("product", "delivery"):
        u = urlparse(sales_env.get(f"SALES_{dep.upper()}_URL", ""))
        check(u.hostname == dep and u.port == ports.get(dep), f"sales → {dep}: URL {u.geturl()} is the {dep} service on its port {ports.get(dep)}")
        check(dep in (services.get("sales", {}).get("depends_on") or {}), f"sales: waits for {dep}")
    arn = sales_env.get("SALES_BROKER_TOPIC_ARN", "")
    check(arn.rsplit(":", 1)[-1] == init_defaults.get("TOPIC_NAME"), f"sales publishes to the init script's topic ({arn})")
    product_env = {k: str(v) for k, v in (services.get("product", {}).get("environment") or {}).items()}
    check(
        product_env.get("PRODUCT_BROKER_QUEUE_NAME", "product-order-events") == init_defaults.get("QUEUE_NAME"),
        f"product consumes the init script's queue ({init_defaults.get('QUEUE_NAME')})",
    )
    delivery_init = init_defaults.get("delivery", {})
    delivery_env = {k: str(v) for k, v in (services.get("delivery", {}).get("environment") or {}).items()}
    arn = delivery_env.get("DELIVERY_BROKER_TOPIC_ARN", "")
    check(
        delivery_env.get("DELIVERY_BROKER_ENABLED", "false").lower() == "true"
        and arn.rsplit(":", 1)[-1] == delivery_init.get("TOPIC_NAME"),
        f"delivery relays its outbox to the init script's delivery topic ({arn})",
    )
    check(
        sales_env.get("SALES_DELIVERY_EVENTS_ENABLED", "false").lower() == "true"
        and sales_env.get("SALES_DELIVERY_EVENTS_QUEUE_NAME", "sales-delivery-events") == delivery_init.get("QUEUE_NAME"),
        f"sales follows delivery's events from the init script's queue ({delivery_init.get('QUEUE_NAME')})",
    )

    # Prometheus.
    prom = services.get("prometheus", {})
    cfg_file = next((v.split(":")[0] for v in prom.get("volumes") or [] if "prometheus.yml" in v), None)
    if check(cfg_file is not None, "prometheus mounts deploy/compose/prometheus.yml"):
        cfg = yaml.safe_load((ROOT / cfg_file).read_text())
        ok(f"{cfg_file} parses")
        targets = {}
        for job in cfg.get("scrape_configs", []):
            for sc in job.get("static_configs", []):
                for t in sc.get("targets", []):
                    targets[t] = job.get("metrics_path", "/metrics")
        for service, port in ports.items():
            check(targets.get(f"{service}:{port}") == "/metrics", f"prometheus scrapes {service}:{port}/metrics")
    jaeger = services.get("jaeger", {})
    check(str((jaeger.get("environment") or {}).get("COLLECTOR_OTLP_ENABLED")).lower() == "true", "jaeger accepts OTLP")


def check_dockerfile():
    section("Dockerfile")
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M | re.I)
    check({"chef", "planner", "builder", "runtime"} <= set(stages), f"multi-stage: {stages}")
    check("cargo chef prepare" in text and "cargo chef cook" in text, "dependencies cooked by cargo-chef (a cached layer)")
    check(re.search(r"SQLX_OFFLINE=true", text) is not None, "SQLX_OFFLINE=true")
    check(re.search(r"^ARG SERVICE\b", text, re.M) is not None, "parameterised by ARG SERVICE")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    check(users and not users[-1].startswith(("root", "0")), f"runs as a non-root user ({users[-1] if users else None})")
    check("build-essential" in text, "a C toolchain in the builder (aws-lc-sys, ring)")
    di = (ROOT / ".dockerignore").read_text().split()
    check({"target/", ".local/", ".git/"} <= set(di), ".dockerignore leaves out target/, .local/, .git/")


# ---------------------------------------------------------------------------
# Kubernetes


def render(kdir):
    """The rendered documents of a kustomization (kubectl kustomize), or None."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        r = subprocess.run([kubectl, "kustomize", str(kdir)], capture_output=True, text=True)
        if not check(r.returncode == 0, f"kubectl kustomize {kdir.relative_to(ROOT)} renders", r.stderr.strip()[-800:]):
            return None
        return r.stdout
    # Without kubectl: the base's own files (an overlay's patches cannot be applied).
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    files = [kdir / f for f in k.get("resources", []) if (kdir / f).is_file()]
    if any(not (kdir / f).is_file() for f in k.get("resources", [])):
        note(f"kubectl is not installed: {kdir.relative_to(ROOT)} not rendered (it builds on another kustomization)")
        return None
    note(f"kubectl is not installed: {kdir.relative_to(ROOT)} checked file by file, unrendered")
    return "\n---\n".join(f.read_text() for f in files)


def check_k8s(code_vars, std_vars, venv_bin):
    section("Kubernetes (deploy/k8s)")
    kroot = ROOT / "deploy/k8s"
    for f in sorted(kroot.rglob("*.yaml")):
        try:
            list(yaml.safe_load_all(f.read_text()))
        except yaml.YAMLError as e:
            fail(f"{f.relative_to(ROOT)} parses: {e}")
    ok("every file under deploy/k8s parses")
    kdirs = [kroot / "base"] + sorted(p for p in (kroot / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    check(len(kdirs) >= 2, "a base and at least one overlay")
    for kdir in kdirs:
        rendered = render(kdir)
        if rendered is None:
            continue
        where = str(kdir.relative_to(ROOT))
        tmp = ROOT / ".local/deploy-check" / (where.replace("/", "_") + ".yaml")
        tmp.write_text(rendered)
        for version in K8S_VERSIONS:
            r = subprocess.run(
                [str(venv_bin / "kubernetes-validate"), "--strict", "--quiet", "-k", version, str(tmp)],
                capture_output=True,
                text=True,
            )
            check(r.returncode == 0, f"{where}: valid against the Kubernetes {version} schemas (strict)", (r.stdout + r.stderr).strip()[-1200:])
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        check_k8s_objects(where, docs, code_vars, std_vars)


def check_k8s_objects(where, docs, code_vars, std_vars):
    by_kind = {}
    for d in docs:
        for key in ("apiVersion", "kind"):
            if key not in d:
                fail(f"{where}: a document without {key}")
        if not (d.get("metadata") or {}).get("name"):
            fail(f"{where}: a {d.get('kind')} without metadata.name")
        by_kind.setdefault(d.get("kind"), {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    config_maps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    k8s_services = by_kind.get("Service", {})
    check(set(deployments) == set(SERVICES), f"{where}: a Deployment per service", sorted(deployments))
    ports = {}
    envs = {}
    secret_keys = {}
    for name, dep in deployments.items():
        spec = dep["spec"]
        pod = spec["template"]
        labels = pod["metadata"].get("labels", {})
        sel = spec["selector"].get("matchLabels", {})
        check(sel and all(labels.get(k) == v for k, v in sel.items()), f"{where} {name}: selector matches the pod labels")
        psa = pod["spec"].get("serviceAccountName")
        if psa:
            check(psa in by_kind.get("ServiceAccount", {}), f"{where} {name}: service account {psa} exists")
        sc = pod["spec"].get("securityContext", {})
        check(sc.get("runAsNonRoot") is True, f"{where} {name}: runs as non-root")
        c = pod["spec"]["containers"][0]
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        probes_ok = True
        for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            port = get.get("port")
            port = named.get(port, port)
            probes_ok &= check(get.get("path") == path and port in named.values(), f"{where} {name}: {probe} GETs {path} on a container port")
        res = c.get("resources", {})
        check(
            all(k in res.get(kind, {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
            f"{where} {name}: cpu and memory requests and limits",
        )
        env = {}
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                ref = src["configMapRef"]["name"]
                if check(ref in config_maps, f"{where} {name}: ConfigMap {ref} exists"):
                    env.update({k: str(v) for k, v in (config_maps[ref].get("data") or {}).items()})
            if "secretRef" in src:
                ref = src["secretRef"]["name"]
                if check(ref in secrets, f"{where} {name}: Secret {ref} exists"):
                    data = secrets[ref].get("stringData") or secrets[ref].get("data") or {}
                    env.update({k: str(v) for k, v in data.items()})
                    secret_keys.setdefault(name, set()).update(data.keys())
        for e in c.get("env", []):
            env[e["name"]] = str(e.get("value", ""))
        envs[name] = env
        if name in SERVICES:
            check_variables(f"{where} {name}", name, env.keys(), code_vars, std_vars)
            check_values(f"{where} {name}", name, env, code_vars)
            broker_rule(f"{where} {name}", env)
            check("AWS_ENDPOINT_URL" not in env, f"{where} {name}: no AWS_ENDPOINT_URL (real AWS)")
            host, port = service_port(env, name)
            ports[name] = port
            check(host == "0.0.0.0" and port in named.values(), f"{where} {name}: listens on 0.0.0.0:{port}, the container port {list(named.values())}")
    for name, svc in k8s_services.items():
        sel = svc["spec"].get("selector", {})
        target = next((d for d in deployments.values() if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())), None)
        if check(target is not None, f"{where} Service {name}: selects a Deployment's pods"):
            c = target["spec"]["template"]["spec"]["containers"][0]
            named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                check(tp in named or tp in named.values(), f"{where} Service {name}: targetPort {tp} is a container port")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        check(ref.get("kind") == "Deployment" and ref.get("name") in deployments, f"{where} HPA {name}: scales Deployment {ref.get('name')}")
        check(hpa["spec"].get("minReplicas", 1) >= 2, f"{where} HPA {name}: at least 2 replicas (a PDB with minAvailable 1 can drain a node)")
    check(set(by_kind.get("HorizontalPodAutoscaler", {})) == set(SERVICES), f"{where}: an HPA per service")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        check(
            any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()) for d in deployments.values()),
            f"{where} PDB {name}: selects a Deployment's pods",
        )
    check(set(by_kind.get("PodDisruptionBudget", {})) == set(SERVICES), f"{where}: a PDB per service")
    check_service_tokens(where, envs, secret_keys)
    check_network_policies(where, by_kind, deployments)
    d_env, s_env = envs.get("delivery", {}), envs.get("sales", {})
    check(
        d_env.get("DELIVERY_BROKER_ENABLED", "").lower() == "true" and d_env.get("DELIVERY_BROKER_TOPIC_ARN", "").endswith(":delivery-events"),
        f"{where} delivery: relays its outbox to the delivery-events topic",
    )
    check(
        s_env.get("SALES_DELIVERY_EVENTS_ENABLED", "").lower() == "true",
        f"{where} sales: follows delivery's events (SALES_DELIVERY_EVENTS_ENABLED)",
    )
    sales = deployments.get("sales")
    if sales:
        cm = config_maps.get("sales-config", {}).get("data", {})
        for dep in ("product", "delivery"):
            u = urlparse(cm.get(f"SALES_{dep.upper()}_URL", ""))
            svc = k8s_services.get(u.hostname or "")
            check(
                svc is not None and any(p["port"] == u.port for p in svc["spec"]["ports"]),
                f"{where} sales → {dep}: URL {u.geturl()} is Service {u.hostname} on one of its ports",
            )


# ---------------------------------------------------------------------------


def check_shell():
    section("shell scripts")
    scripts = [p for d in ("scripts", ".ci", "localstack/init/ready.d") for p in sorted((ROOT / d).iterdir())]
    scripts = [p for p in scripts if p.is_file() and p.read_text(errors="replace").startswith("#!") and "sh" in p.read_text(errors="replace").splitlines()[0]]
    for p in scripts:
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        check(r.returncode == 0, f"bash -n {p.relative_to(ROOT)}", r.stderr.strip())


def main():
    venv_bin = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.executable).parent
    code_vars = code_variables()
    std_vars = standard_variables()
    section("what the code reads")
    for service, names in code_vars.items():
        check(len(names) >= 5 and SERVICES[service] + "LISTEN_ADDR" in names, f"{service}: {len(names)} variables found in its config sources")
    init_defaults = check_init_script()
    check_compose(code_vars, std_vars, init_defaults, venv_bin)
    check_dockerfile()
    check_k8s(code_vars, std_vars, venv_bin)
    check_shell()
    print()
    if failures:
        print(f"check-deploy: {len(failures)} failed")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"check-deploy: all checks passed ({len(notes)} notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
