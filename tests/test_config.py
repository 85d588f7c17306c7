"""Config: env substitution, errors that name the key, explain(), world-readable secrets."""
from __future__ import annotations

import os

import pytest

from gridwatch.config import ConfigError, GridwatchConfig, explain, load, parse, secrets_world_readable, substitute_env

RULE = {"name": "flood", "kind": "threshold", "params": {"above": 2.0}}


def test_env_substitution_with_and_without_default():
    env = {"HOST": "broker.local", "PW": "s3cret"}
    cfg = parse({"mqtt": {"host": "${HOST}", "password": "${PW}", "username": "${USER_X:-ops}",
                          "client_id": "gw-${HOST}-${NOPE:-x}"}}, env=env)
    assert cfg.mqtt.host == "broker.local" and cfg.mqtt.password == "s3cret"
    assert cfg.mqtt.username == "ops" and cfg.mqtt.client_id == "gw-broker.local-x"
    assert substitute_env({"a": ["${A:-}", 1, {"b": "$A ${A:-z}"}]}, {}) == {"a": ["", 1, {"b": "$A z"}]}


def test_missing_variable_names_the_key():
    with pytest.raises(ConfigError, match=r"mqtt\.password: environment variable \$\{MQTT_PW\} is not set"):
        parse({"mqtt": {"password": "${MQTT_PW}"}}, env={})
    with pytest.raises(ConfigError, match=r"rules\.0\.params\.above"):
        substitute_env({"rules": [{"params": {"above": "${LEVEL}"}}]}, {})


def test_unknown_keys_are_rejected_with_their_name():
    with pytest.raises(ConfigError, match="mqtt.hots"):
        parse({"mqtt": {"hots": "x"}})
    with pytest.raises(ConfigError, match="colour"):
        parse({"colour": "blue"})


def test_bad_rule_params_name_the_rule_and_the_field():
    with pytest.raises(ConfigError, match=r"rules\.0\.params \(flood\).*min_duration_s"):
        parse({"rules": [{**RULE, "params": {"above": 2.0, "min_duration_s": -1}}]})
    with pytest.raises(ConfigError, match=r"rules\.1\.params \(gas\).*`z_clear`"):
        parse({"rules": [RULE, {"name": "gas", "kind": "zscore", "params": {"z_raise": 1, "z_clear": 2}}]})
    with pytest.raises(ConfigError, match=r"rules\.0\.kind: unknown kind 'thresh'"):
        parse({"rules": [{**RULE, "kind": "thresh"}]})
    with pytest.raises(ConfigError, match="used twice"):
        parse({"rules": [RULE, RULE]})
    with pytest.raises(ConfigError, match=r"mqtt\.port.*65536"):
        parse({"mqtt": {"port": 65536}})


def test_load_reads_toml_and_reports_errors(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('[site]\nname = "${SITE:-north}"\n[[rules]]\nname = "flood"\nkind = "threshold"\nparams = { above = 2.0 }\n')
    cfg = load(f, env={})
    assert cfg.site.name == "north" and cfg.rules[0].params == {"above": 2.0}
    assert cfg.base_dir == str(tmp_path.resolve())
    f.write_text("[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_explain_lists_every_field_with_a_description():
    lines = explain()
    text = "\n".join(lines)

    def walk(model, prefix=""):
        for name, f in model.model_fields.items():
            if name == "base_dir":
                continue
            assert f.description, f"{prefix}{name} has no description"
            assert f"{prefix}{name}" in text, f"{prefix}{name} missing from explain()"
            from gridwatch.config import _submodel
            sub = _submodel(f.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(GridwatchConfig)
    assert any(line.strip().startswith("mqtt.port = 1883") for line in lines)
    assert all(("—" in line or line.startswith("[")) for line in lines)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_secrets_world_readable(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('[mqtt]\npassword = "hunter2"\n')
    f.chmod(0o644)
    assert secrets_world_readable(f)
    f.chmod(0o640)
    assert not secrets_world_readable(f)
    f.write_text('[mqtt]\npassword = "${MQTT_PASSWORD}"\n')
    f.chmod(0o644)
    assert not secrets_world_readable(f)  # the secret comes from the environment
    f.write_text('[mqtt]\nhost = "x"\n')
    assert not secrets_world_readable(f)


def test_store_path_reads_only_site_and_store(tmp_path):
    from gridwatch.config import store_path

    f = tmp_path / "gw.toml"
    f.write_text('[site]\ndata_dir = "${DD:-state}"\n[store]\npath = "x.db"\n[mqtt]\npassword = "${UNSET_PW}"\nbogus = 1\n')
    assert store_path(f, env={}) == tmp_path.resolve() / "state" / "x.db"
    with pytest.raises(ConfigError, match=r"store\.paht: unknown key; did you mean 'path'"):
        f.write_text('[store]\npaht = "x.db"\n')
        store_path(f, env={})


def test_preflight_passes_the_shipped_configs_and_creates_nothing(tmp_path):
    from pathlib import Path

    from gridwatch.config import preflight

    root = Path(__file__).resolve().parents[1]
    env = {"GRIDWATCH_DATA_DIR": str(tmp_path / "data")}
    for f in [*sorted((root / "examples").glob("*.toml")), root / "gridwatch" / "demo" / "demo.toml"]:
        assert preflight(load(f, env=env)) == [], f
    assert not (tmp_path / "data").exists()


def test_empty_credentials_mean_none():
    cfg = parse({"mqtt": {"username": "${U:-}", "password": "${P:-}"}}, env={})
    assert cfg.mqtt.username is None and cfg.mqtt.password is None


def test_relative_tls_files_are_relative_to_the_config_file(tmp_path):
    cfg = parse({"mqtt": {"tls": {"ca_file": "certs/ca.pem", "cert_file": "/abs/c.pem"}},
                 "kafka": {"ssl_ca_file": "k/ca.pem"}}, base_dir=tmp_path)
    assert cfg.mqtt.tls.ca_file == str(tmp_path / "certs" / "ca.pem")
    assert cfg.mqtt.tls.cert_file == "/abs/c.pem" and cfg.kafka.ssl_ca_file == str(tmp_path / "k" / "ca.pem")
