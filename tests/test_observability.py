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
