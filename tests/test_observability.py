"""Secrets never reach logs; structured JSON log lines carry fields."""
import io
import json
import logging

from gridwatch.observability import scrub, setup_logging


def test_scrub_removes_passwords_and_tokens():
    assert "s3cret" not in scrub("connect mqtt://gw:s3cret@broker:8883 failed")
    assert "s3cret" not in scrub('password = "s3cret"')
    assert "tok-123" not in scrub("Authorization: Token tok-123")
    assert "abc" not in scrub("token=abc, retry")
    assert "pw-lit" not in scrub("anything pw-lit here", secrets=("pw-lit",))


def test_json_logs_scrub_known_secrets():
    buf = io.StringIO()
    setup_logging("info", "json", secrets=("hunter2",), stream=buf)
    logging.getLogger("gridwatch.test").info("login as gw with hunter2", extra={"fields": {"host": "h", "url": "mqtt://u:pw@h"}})
    line = json.loads(buf.getvalue().strip())
    assert line["msg"] == "login as gw with ***" and line["host"] == "h" and "pw@" not in line["url"]
    setup_logging("warning", "text")


def test_a_short_password_does_not_mangle_words_or_show_where_its_letters_are():
    """Was: password 'x' turned 'inbox' into 'inbo***' in every log line."""
    line = "inbox full: reading paused, the broker keeps the backlog of box 7"
    assert scrub(line, secrets=("x",)) == line
    assert scrub(line, secrets=("box",)) == line
    # a known secret of 4+ characters is replaced where it stands as a whole token only
    assert scrub("pw S3cr and xS3cr and S3cr_x and (S3cr)", secrets=("S3cr",)) == "pw *** and xS3cr and S3cr_x and (***)"
    # short secrets are still redacted where they stand as credentials
    assert scrub("mqtt://gw:x@broker password=x token: ab", secrets=("x",)) == "mqtt://gw:***@broker password=*** token: ***"


def test_secret_field_values_are_redacted_whole_also_with_spaces_and_quotes():
    assert scrub('{"password": "two words \\" quoted", "x": 1}') == '{"password": "***", "x": 1}'
    assert scrub("sasl_password='a b c' next") == "sasl_password='***' next"
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    logging.getLogger("gridwatch.test").info("connect", extra={"fields": {"sasl_password": "pw", "token": "t t",
                                                                          "host": "inbox"}})
    line = json.loads(buf.getvalue().strip())
    assert line["sasl_password"] == "***" and line["token"] == "***" and line["host"] == "inbox"
    setup_logging("warning", "text")


def test_every_secret_of_a_config_is_known_to_the_log_filter(tmp_path):
    from gridwatch.config import parse
    from gridwatch.observability import config_secrets

    cfg = parse({"site": {"data_dir": str(tmp_path)}, "mqtt": {"password": "mqtt-pw-1"},
                 "kafka": {"sasl_password": "kafka-pw-2"}, "influx": {"url": "http://h", "token": "influx-tok-3"},
                 "cameras": [{"name": "c1", "url": "rtsp://admin:cam-pw-4@10.0.0.9/s"}]}, base_dir=tmp_path)
    assert set(config_secrets(cfg)) == {"mqtt-pw-1", "kafka-pw-2", "influx-tok-3", "cam-pw-4"}
