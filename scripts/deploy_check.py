"""Validates the deployment material without a container engine.

    python3 scripts/deploy_check.py path/to/otstream

- docker-compose.yml: `docker-compose config` (the compose file schema, with
  anchors and merges resolved) must accept it; every file it mounts exists;
  every otstream service's command parses (`otstream CMD... --help`), and
  for the stages, the configuration it would run with (its environment and
  flags) passes `otstream check-config`.
- deploy/cluster/docker-compose.cluster.yml, over docker-compose.yml: the
  same checks, and its ClickHouse servers are exactly the replicas of the
  cluster it mounts (cluster.xml), each with its own shard and replica
  macros matching its place there; migrate, the sink and the ingress name
  the cluster.
- deploy/prometheus/prometheus.yml scrapes exactly the otstream services of
  the compose file, on the port the image serves metrics on.
- deploy/grafana: the provisioning YAML parses; the dashboard JSON loads,
  has panels, and each panel's data source is a provisioned one. (The
  metric names it queries are checked against a running stage by the
  pipeline tests; its ClickHouse SQL runs in chDB, scripts/chdb_check.py.)
- deploy/k8s: every manifest parses and has apiVersion, kind and a name;
  kustomization.yaml lists exactly the manifests there; each otstream
  container's args parse, and the stages' configuration (the ConfigMap's
  otstream.toml plus the container's env) passes `otstream check-config`.

Exits non-zero naming the first problem.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml
from xml.etree import ElementTree

ROOT = pathlib.Path(__file__).resolve().parent.parent
OTSTREAM = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/otstream")
METRICS_PORT = "9145"


def fail(msg):
    print(f"deploy check: {msg}", file=sys.stderr)
    sys.exit(1)


def otstream(args, env=None):
    """Runs otstream with only the given OTSTREAM_* environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTSTREAM_")}
    base.update(env or {})
    return subprocess.run([OTSTREAM, *args], env=base, capture_output=True, text=True)


def check_command(where, args, env, config_file=None):
    """The command's flags parse; a stage's configuration is valid."""
    r = otstream([*args, "--help"], env)
    if r.returncode != 0:
        fail(f"{where}: `otstream {' '.join(args)}` does not parse: {r.stderr.strip()}")
    if args[:1] in (["run"], ["serve"]):
        flags = args[2:] if args[0] == "run" else args[1:]
        env = dict(env)
        if config_file:
            env["OTSTREAM_CONFIG"] = config_file
        r = otstream(["check-config", *flags], env)
        if r.returncode != 0 or not r.stdout.startswith("configuration ok"):
            fail(f"{where}: configuration refused: {r.stderr.strip()}")


def compose(*files):
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    r = subprocess.run(["docker-compose", *args, "config"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"docker-compose {' '.join(files)} config: {r.stderr.strip()}")
    resolved = yaml.safe_load(r.stdout)
    services = resolved["services"]
    stages = set()
    for name, svc in services.items():
        # `docker-compose config` writes volumes as SOURCE:TARGET[:MODE],
        # bind mounts with absolute paths.
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("/") and not pathlib.Path(src).exists():
                fail(f"compose service {name} mounts {src}, which does not exist")
        build = svc.get("build")
        if build and not (pathlib.Path(build["context"]) / build.get("dockerfile", "Dockerfile")).exists():
            fail(f"compose service {name}: no Dockerfile at {build}")
        if svc.get("image", "").startswith("otstream"):
            cmd = svc.get("command") or ["serve"]
            if svc.get("entrypoint") == ["otstream"] and cmd == ["--help"]:
                continue
            env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
            check_command(f"compose service {name}", cmd, env)
            if cmd[0] == "run":
                stages.add(name)
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = set()
    for job in prom["scrape_configs"]:
        if job["job_name"] != "otstream":
            continue
        for sc in job["static_configs"]:
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                if port != METRICS_PORT:
                    fail(f"prometheus scrapes {t}, but the stages serve metrics on :{METRICS_PORT}")
                targets.add(host)
    if targets != stages:
        fail(f"prometheus scrapes {sorted(targets)}, the compose stages are {sorted(stages)}")
    for host in targets:
        if host not in services:
            fail(f"prometheus target {host} is not a compose service")
    return len(services), sorted(stages), services


def cluster(services):
    """The ClickHouse cluster overlay: every server is a replica of the
    cluster's remote_servers and nothing else is; each has its own shard
    and replica macros, matching its place there; the stages that touch
    ClickHouse, and migrate, name the cluster."""
    servers = {n: s for n, s in services.items()
               if s.get("image", "").startswith("clickhouse/clickhouse-server")}
    layout, macros = None, {}
    for name, svc in servers.items():
        mounted = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if v.startswith("/")}
        for target, src in mounted.items():
            if src.endswith(".xml"):
                try:
                    ElementTree.parse(src)
                except ElementTree.ParseError as e:
                    fail(f"{src}: {e}")
        try:
            cluster_xml = ElementTree.parse(mounted["/etc/clickhouse-server/config.d/cluster.xml"])
            macro_xml = ElementTree.parse(mounted["/etc/clickhouse-server/config.d/macros.xml"])
        except KeyError as e:
            fail(f"compose service {name} does not mount {e}")
        shards = [[r.findtext("host") for r in sh.findall("replica")]
                  for sh in cluster_xml.findall("./remote_servers/otstream/shard")]
        if layout not in (None, shards):
            fail(f"compose service {name} mounts another cluster layout")
        layout = shards
        macros[svc.get("hostname", name)] = (macro_xml.findtext("./macros/shard"), macro_xml.findtext("./macros/replica"))
    hosts = sorted(h for sh in layout for h in sh)
    if hosts != sorted(macros):
        fail(f"the cluster's replicas are {hosts}, the ClickHouse services {sorted(macros)}")
    for i, shard in enumerate(layout, 1):
        names = [macros[h] for h in shard]
        if any(m[0] != f"{i:02}" for m in names) or len({m[1] for m in names}) != len(names):
            fail(f"shard {i}'s replicas {shard} have macros {names}")
    for name in ("migrate", "sink", "ingress"):
        env = services[name].get("environment") or {}
        if "otstream" not in (env.get("OTSTREAM_CLICKHOUSE_CLUSTER"), env.get("OTSTREAM_CLICKHOUSE__CLUSTER")):
            fail(f"compose service {name} does not name the cluster")
    return len(layout), len(hosts)


def grafana():
    prov = ROOT / "deploy/grafana/provisioning"
    sources = yaml.safe_load((prov / "datasources/datasources.yml").read_text())["datasources"]
    uids = {s["uid"]: s["type"] for s in sources}
    yaml.safe_load((prov / "dashboards/dashboards.yml").read_text())
    dash = json.loads((ROOT / "deploy/grafana/dashboards/otstream.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    if not panels:
        fail("the dashboard has no panels")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard panel ids repeat")
    for p in panels:
        for t in p["targets"]:
            ds = t["datasource"]
            if uids.get(ds["uid"]) != ds["type"]:
                fail(f"panel {p['title']!r} uses data source {ds}, not one provisioned")
            if not (t.get("expr") or t.get("rawSql")):
                fail(f"panel {p['title']!r} has a target without a query")
    return len(panels)


def k8s():
    base = ROOT / "deploy/k8s"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    files = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
    if set(kust["resources"]) != files:
        fail(f"kustomization lists {sorted(kust['resources'])}, the folder has {sorted(files)}")
    docs = []
    for f in sorted(files):
        for d in yaml.safe_load_all((base / f).read_text()):
            if d is None:
                continue
            for key in ("apiVersion", "kind"):
                if key not in d:
                    fail(f"{f}: a document without {key}")
            if not d.get("metadata", {}).get("name"):
                fail(f"{f}: a {d['kind']} without a name")
            docs.append((f, d))
    configmaps = {d["metadata"]["name"]: d["data"] for _, d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for _, d in docs if d["kind"] == "Secret"}
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for f, d in docs:
            spec = d.get("spec", {})
            pod = spec.get("template", {}).get("spec")
            if not pod:
                continue
            mounts = {}
            for v in pod.get("volumes", []):
                if "configMap" in v:
                    name = v["configMap"]["name"]
                    if name not in configmaps:
                        fail(f"{f}: volume {v['name']} uses ConfigMap {name}, which is not defined")
                    mounts[v["name"]] = name
            for c in pod["containers"]:
                if c["image"] != "otstream":
                    continue
                env, config_file = {}, None
                for e in c.get("env", []):
                    if "value" in e:
                        env[e["name"]] = e["value"]
                    elif "secretKeyRef" in e.get("valueFrom", {}):
                        ref = e["valueFrom"]["secretKeyRef"]
                        if ref["key"] not in secrets.get(ref["name"], {}):
                            fail(f"{f}: {e['name']} reads secret {ref}, which is not defined")
                        env[e["name"]] = secrets[ref["name"]][ref["key"]]
                    elif "fieldRef" in e.get("valueFrom", {}):
                        env[e["name"]] = f"{d['metadata']['name']}-0"
                for m in c.get("volumeMounts", []):
                    if m["name"] not in mounts:
                        fail(f"{f}: mount {m['name']} has no volume")
                    for key, text in configmaps[mounts[m["name"]]].items():
                        path = pathlib.Path(tmp) / f"{mounts[m['name']]}-{key}"
                        path.write_text(text)
                        if env.get("OTSTREAM_CONFIG") == f"{m['mountPath']}/{key}":
                            config_file = str(path)
                if "OTSTREAM_CONFIG" in env and not config_file:
                    fail(f"{f}: OTSTREAM_CONFIG={env['OTSTREAM_CONFIG']} is not a mounted ConfigMap key")
                if config_file:
                    env["OTSTREAM_CONFIG"] = config_file
                check_command(f"{f} {d['kind']} {d['metadata']['name']}", c["args"], env, config_file)
                checked += 1
    return len(docs), checked


def main():
    if not pathlib.Path(OTSTREAM).exists():
        fail(f"no otstream binary at {OTSTREAM}")
    os.chdir(ROOT)
    services, stages, _ = compose("docker-compose.yml")
    _, _, overlaid = compose("docker-compose.yml", "deploy/cluster/docker-compose.cluster.yml")
    shards, replicas = cluster(overlaid)
    panels = grafana()
    docs, containers = k8s()
    print(
        f"deploy check: compose {services} services (stages {', '.join(stages)}) and prometheus agree; "
        f"the cluster overlay's {replicas} ClickHouse servers are its {shards} shards' replicas; "
        f"grafana dashboard {panels} panels on provisioned sources; "
        f"k8s {docs} manifests, {containers} otstream containers whose commands and configuration check out"
    )


main()
