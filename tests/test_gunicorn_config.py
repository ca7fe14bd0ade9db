"""
`-gc FILE` (the original's --gunicorn-config): bind, workers and accesslog
come from the gunicorn config file where the sharq config does not set them;
every other setting is ignored with one log line; a file that cannot be read
or run is one line naming it.
"""

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sharqd.errors import ConfigError
from sharqd.gunicorn_config import load
from sharqd.tap import Options, config_args


def files(tmp_path, sharq, gunicorn):
    sharq_path, gunicorn_path = tmp_path / "sharq.conf", tmp_path / "gunicorn.conf.py"
    sharq_path.write_text(sharq)
    gunicorn_path.write_text(gunicorn)
    return str(sharq_path), str(gunicorn_path)


@pytest.fixture
def warnings():
    seen = []

    def observer(event):
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def test_bind_workers_accesslog_apply_where_sharq_config_is_silent(tmp_path):
    """When the sharq config sets none of them, bind, workers and accesslog
    of the gunicorn file are used."""
    config = load(*files(tmp_path, "[redis]\ndb = 1\n",
                         "import multiprocessing\nbind = '0.0.0.0:9001'\n"
                         "workers = 3\naccesslog = 'logs/access.log'\n"))
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9001)
    assert config.server.workers == 3
    assert config.server.accesslog == "logs/access.log"
    assert config.redis.db == 1


def test_sharq_config_wins(tmp_path, warnings):
    """When the sharq config sets the address, workers or accesslog, its
    values are used and each unused gunicorn setting is logged once."""
    config = load(*files(tmp_path, "[sharq-server]\nport : 8080\nworkers : 2\n",
                         "bind = ['127.0.0.1:9001']\nworkers = 5\naccesslog = 'a.log'\n"))
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.workers == 2
    assert config.server.accesslog == "a.log"
    assert len([w for w in warnings if "bind not used" in w and "port" in w]) == 1
    assert len([w for w in warnings if "workers not used" in w]) == 1


@pytest.mark.parametrize("bind, server", [
    ("unix:/run/sharqd/http.sock", {"listen": "unix:address=/run/sharqd/http.sock"}),
    ("unix:///run/s.sock", {"listen": "unix:address=/run/s.sock"}),
    (["127.0.0.1:9002", "10.0.0.1:9003"], {"host": "127.0.0.1", "port": 9002}),
    ("tcp://localhost:9004", {"host": "localhost", "port": 9004}),
    ("[::1]:9005", {"host": "::1", "port": 9005}),
    ("10.1.2.3", {"host": "10.1.2.3", "port": 8000}),
    (":9006", {"host": "0.0.0.0", "port": 9006}),
])
def test_bind_forms(tmp_path, bind, server):
    """When bind is host:port, unix:PATH, a list or gunicorn's other
    spellings, sharqd listens where gunicorn would (the first of a list)."""
    config = load(*files(tmp_path, "", f"bind = {bind!r}\n"))
    for key, value in server.items():
        assert getattr(config.server, key) == value


def test_other_settings_are_ignored_with_one_line_each(tmp_path, warnings):
    """When the file sets what sharqd does not use (worker_class, hooks),
    each is named in one warning; modules and private names are not."""
    config = load(*files(tmp_path, "",
                         "import os\n_private = 1\nworker_class = 'gevent'\n"
                         "timeout = 30\ndef post_fork(server, worker):\n    pass\n"))
    assert config.server.workers == 1
    for name in ("worker_class", "timeout", "post_fork"):
        assert len([w for w in warnings if f"'{name}' ignored" in w]) == 1
    assert not [w for w in warnings if "'os'" in w or "_private" in w]


def test_quiet_logs_nothing(tmp_path, warnings):
    """When a worker process reads the files again, nothing is logged twice."""
    load(*files(tmp_path, "[sharq-server]\nworkers = 2\n", "timeout = 1\nworkers = 4\n"),
         quiet=True)
    assert warnings == []


@pytest.mark.parametrize("text, message", [
    ("bind = 'fd://3'\n", "bind = 'fd://3': sharqd takes host:port or unix:PATH"),
    ("bind = 'h:http'\n", "bind = 'h:http': the port must be a number from 0 to 65535"),
    ("bind = 8000\n", "bind = 8000: must be a string, host:port or unix:PATH"),
    ("workers = 0\n", "workers = 0: must be a whole number from 1 to 256"),
    ("workers = True\n", "workers = True: must be a whole number from 1 to 256"),
    ("accesslog = 3\n", "accesslog = 3: must be the path of a file"),
    ("workers = (\n", "cannot run gunicorn config file (line 1): SyntaxError"),
    ("raise RuntimeError('no\\nway')\n",
     "cannot run gunicorn config file: RuntimeError: no way"),
])
def test_bad_file_is_one_line_naming_it(tmp_path, text, message):
    """When a value is unusable or the file does not run, the error is one
    line naming the gunicorn file, and the setting where there is one."""
    sharq, gunicorn = files(tmp_path, "", text)
    with pytest.raises(ConfigError) as info:
        load(sharq, gunicorn)
    assert str(info.value).startswith(f"{gunicorn}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line(tmp_path):
    """When the gunicorn file does not exist or is a folder, the error says so."""
    sharq, _ = files(tmp_path, "", "")
    with pytest.raises(ConfigError, match="cannot read gunicorn config file: no such file"):
        load(sharq, str(tmp_path / "none.py"))
    with pytest.raises(ConfigError, match="cannot read gunicorn config file: not a file"):
        load(sharq, str(tmp_path))


def test_twistd_option_reads_it_and_workers_get_it_again(tmp_path):
    """When the plugin is given --gunicorn-config, its settings apply, and
    worker processes are started with both files."""
    sharq, gunicorn = files(tmp_path, "", "workers = 2\nbind = '127.0.0.1:9010'\n")
    options = Options()
    options.parseOptions(["-c", sharq, "--gunicorn-config", gunicorn])
    assert (options.loaded.server.port, options.loaded.server.workers) == (9010, 2)
    assert config_args(options) == ["-c", sharq, "--gunicorn-config", gunicorn]


def test_twistd_option_error_is_one_line(tmp_path):
    """When the gunicorn file is bad, startup stops with one sharqd: line."""
    sharq, gunicorn = files(tmp_path, "", "workers = 'many'\n")
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["-c", sharq, "--gunicorn-config", gunicorn])
    assert str(info.value) == (f"sharqd: {gunicorn}: workers = 'many': "
                               f"must be a whole number from 1 to 256")
