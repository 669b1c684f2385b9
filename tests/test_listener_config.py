"""Listener configuration: TOML + env overrides + CLI flags, every field documented, helpful errors."""

import dataclasses
import json
import tomllib

import pytest
from click.testing import CliRunner

from unirg.plugin.config import (
    Config,
    ConfigError,
    Peer,
    apply_overrides,
    example_toml,
    load_config,
)
from unirg.plugin.listen_cli import cli


def test_every_field_is_documented_and_example_toml_round_trips(tmp_path):
    config = Config()
    for section in dataclasses.fields(config):
        for f in dataclasses.fields(getattr(config, section.name)):
            assert f.metadata.get("doc"), f"{section.name}.{f.name} has no doc"
    text = example_toml()
    tomllib.loads(text)  # valid TOML
    path = tmp_path / "unirg.toml"
    path.write_text(text)
    assert load_config(path, env={}) == Config()


def test_toml_then_env_override(tmp_path):
    path = tmp_path / "unirg.toml"
    path.write_text(
        '[listener]\nport = 4000\nallow_ae = ["PACS1"]\n'
        '[assembly]\nexpected_views = ["frontal"]\nlate_policy = "rerun"\n'
        '[store]\ndestinations = ["ORTHANC@127.0.0.1:4242"]\n'
    )
    cfg = load_config(path, env={"UNIRG_LISTENER_PORT": "4001", "UNIRG_LISTENER_ALLOW_AE": "A, B",
                                 "UNIRG_TLS_ENABLED": "false", "UNIRG_QUEUE_MAX_ATTEMPTS": "7"})
    assert cfg.listener.port == 4001
    assert cfg.listener.allow_ae == ["A", "B"]
    assert cfg.assembly.expected_views == ["frontal"]
    assert cfg.assembly.late_policy == "rerun"
    assert cfg.queue.max_attempts == 7
    assert cfg.store.peers == [Peer("ORTHANC", "127.0.0.1", 4242)]
    assert cfg.queue_url.startswith("sqlite:///") and cfg.queue_url.endswith("unirg.sqlite3")


@pytest.mark.parametrize(
    "toml, env, message",
    [
        ("[listener]\nprot = 1\n", {}, "unknown key(s) ['prot']"),
        ("[listner]\n", {}, "unknown table(s) ['listner']"),
        ("", {"UNIRG_LISTENER_PORT": "ten"}, "UNIRG_LISTENER_PORT: expected an integer"),
        ('[priors]\npacs = "ORTHANC:4242"\n', {}, "priors.pacs: expected AET@HOST:PORT"),
        ('[assembly]\nlate_policy = "redo"\n', {}, "use one of ['ignore', 'rerun']"),
        ('[listener]\nae_title = "THIS_AE_TITLE_IS_TOO_LONG"\n', {}, "listener.ae_title"),
        ("[tls]\nenabled = true\n", {}, "tls.enabled needs tls.cert_file"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, env, message):
    path = tmp_path / "unirg.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert message in str(info.value)


def test_peer_parse():
    assert Peer.parse("PACS@pacs.example.org:104") == Peer("PACS", "pacs.example.org", 104)
    assert Peer.parse("PACS@[::1]:11112") == Peer("PACS", "::1", 11112)
    assert str(Peer.parse("PACS@[::1]:11112")) == "PACS@[::1]:11112"
    for bad in ("PACS@host", "host:104", "PACS@host:0", "@host:104"):
        with pytest.raises(ConfigError):
            Peer.parse(bad)


def test_cli_style_overrides():
    cfg = apply_overrides(Config(), {"listener.port": 5000, "listener.allow_ae": ["X"], "model.path": None,
                                     "worker.in_listener": False})
    assert (cfg.listener.port, cfg.listener.allow_ae, cfg.worker.in_listener) == (5000, ["X"], False)
    with pytest.raises(ConfigError, match="no such setting"):
        apply_overrides(Config(), {"listener.nope": 1})


def test_cli_example_config_and_status_on_empty_queue(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["listen", "--example-config"])
    assert out.exit_code == 0 and "[listener]" in out.output
    out = runner.invoke(cli, ["status", "--data-dir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["queue"] == {"queued": 0, "retrying": 0, "in_flight": 0, "done": 0, "failed": 0}
    out = runner.invoke(cli, ["listen", "--pacs", "nonsense", "--data-dir", str(tmp_path)])
    assert out.exit_code == 2 and "AET@HOST:PORT" in out.output


def test_json_log_lines_carry_the_key_value_fields():
    import logging

    from unirg.plugin.service import JsonLogFormatter

    record = logging.LogRecord("unirg.plugin.worker", logging.INFO, __file__, 1,
                               "event=sr_written job=%d study=%s reason=%r", (7, "1.2.3", "PACS down"), None)
    line = json.loads(JsonLogFormatter().format(record))
    assert (line["event"], line["job"], line["study"], line["reason"]) == ("sr_written", "7", "1.2.3", "PACS down")
