"""qslm.data.datasets: resolution order, checksums, downloads (from a local HTTP server), loaders.

No test touches the network: downloads come from an http.server bound to 127.0.0.1, and every
test runs with HOME, XDG_CACHE_HOME and QSLM_DATA_DIR pointed at (or removed for) temporary
folders. The tests of the real data sets run when QSLM_DATA_DIR is set (CI sets it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import re
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from qslm.data import datasets as dsm
from qslm.data.datasets import (
    DATASETS,
    DataFile,
    Dataset,
    Source,
    get_dataset,
    load_sst2,
    load_text,
    load_wikitext2,
    read_sst2_tsv,
    resolve,
)
from qslm.errors import ChecksumError, DataNotFoundError, DatasetError, DownloadError, QslmError

REAL_DATA_DIR = os.environ.get("QSLM_DATA_DIR")  # read before the fixtures below remove it
needs_real_data = pytest.mark.skipif(not REAL_DATA_DIR, reason="set QSLM_DATA_DIR to the shared data folder")

# Small files in the real formats.
WIKI = {
    "wiki.train.raw": " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles , 1 @,@ 000 km \n \n",
    "wiki.valid.raw": " \n = Homarus gammarus = \n \n Homarus gammarus is a large crustacean . \n",
    "wiki.test.raw": " \n = Robert Boulter = \n \n Robert Boulter is an English film and television actor . \n \n",
}
SST2 = {
    "train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\ncontains no wit , only labored gags \t0\n"
    "that loves its characters \t1\n",
    "dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\nunflinchingly bleak and desperate \t0\n",
    "test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n1\tthis film 's relationship to actual tension is the same .\n",
}
SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def small_registry(url_base: str = "http://127.0.0.1:9/", archive_sha: str | None = None) -> dict[str, Dataset]:
    """The real registry entries with the small files' sizes and checksums and local URLs."""

    def files(ds: Dataset, contents: dict[str, str]) -> tuple[DataFile, ...]:
        return tuple(
            dataclasses.replace(f, size_bytes=len(contents[f.name].encode()), sha256=sha(contents[f.name]))
            for f in ds.files
        )

    def src(ds: Dataset, name: str, sha256: str | None) -> Source:
        return dataclasses.replace(ds.source, url=url_base + name, sha256=sha256)

    wiki, sst, shak = DATASETS["wikitext-2-raw"], DATASETS["sst2"], DATASETS["tinyshakespeare"]
    return {
        "wikitext-2-raw": dataclasses.replace(
            wiki, files=files(wiki, WIKI), source=src(wiki, "wikitext-2-raw-v1.zip", archive_sha)
        ),
        "sst2": dataclasses.replace(sst, files=files(sst, SST2), source=src(sst, "SST-2.zip", None)),
        "tinyshakespeare": dataclasses.replace(
            shak, files=files(shak, {"input.txt": SHAKESPEARE}), source=src(shak, "input.txt", None)
        ),
    }


def write_files(folder: Path, contents: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (folder / name).write_bytes(text.encode())
    return folder


def zip_bytes(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


WIKI_ZIP = zip_bytes({f"wikitext-2-raw/{n}": t for n, t in WIKI.items()})
SST2_ZIP = zip_bytes({**{f"SST-2/{n}": t for n, t in SST2.items()}, "SST-2/original/README.txt": "extra member\n"})


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """HOME in tmp_path, no XDG_CACHE_HOME, no QSLM_DATA_DIR, no proxy for 127.0.0.1."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("QSLM_DATA_DIR", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return SimpleNamespace(home=home, cache=home / ".cache" / "qslm" / "data")


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1; ``/truncated/NAME`` announces more bytes than it sends."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path.startswith("/truncated/"):
                data = (root / self.path.removeprefix("/truncated/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data) + 1000))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    (root / "wikitext-2-raw-v1.zip").write_bytes(WIKI_ZIP)
    (root / "SST-2.zip").write_bytes(SST2_ZIP)
    (root / "input.txt").write_bytes(SHAKESPEARE.encode())
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}/", requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def all_paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# --- registry -----------------------------------------------------------------------------------


def test_registry_layout():
    wiki = DATASETS["wikitext-2-raw"]
    assert [f.name for f in wiki.files] == ["wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"]
    assert [f.member for f in wiki.files] == [f"wikitext-2-raw/{f.name}" for f in wiki.files]
    assert wiki.source.url == "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip"
    assert wiki.source.sha256 == "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11"
    sst = DATASETS["sst2"]
    assert [f.member for f in sst.files] == ["SST-2/train.tsv", "SST-2/dev.tsv", "SST-2/test.tsv"]
    assert sst.source.url == "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip" and sst.source.sha256 is None
    shak = DATASETS["tinyshakespeare"]
    assert shak.source.kind == "file" and shak.files[0].name == "input.txt"


@pytest.mark.parametrize(
    "name, expected",
    [("wikitext-2-raw", "wikitext-2-raw"), ("wikitext2", "wikitext-2-raw"), ("SST-2", "sst2"), ("sst2", "sst2"),
     ("tinyshakespeare", "tinyshakespeare")],
)
def test_get_dataset_names(name, expected):
    assert get_dataset(name).name == expected


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match=r"unknown data set 'imagenet'.*sst2"):
        get_dataset("imagenet")
    with pytest.raises(DatasetError, match=r"no split 'dev2'.*train.*valid.*test"):
        DATASETS["wikitext-2-raw"].file("dev2")
    # "validation", "val", "valid" and "dev" name the same split.
    assert DATASETS["wikitext-2-raw"].file("validation").name == "wiki.valid.raw"
    assert DATASETS["sst2"].file("validation").name == "dev.tsv"
    assert issubclass(DatasetError, QslmError) and issubclass(DatasetError, ValueError)


def test_registry_validation():
    with pytest.raises(DatasetError, match="sha256"):
        DataFile("train", "x.txt", 1, "abc")
    with pytest.raises(DatasetError, match="member"):
        Dataset("x", "x", (DataFile("all", "x.txt", 1, "0" * 64),), Source("http://127.0.0.1/x.zip", "zip"))
    with pytest.raises(DatasetError, match="kind"):
        Source("http://127.0.0.1/x", "tar")


# --- resolution ---------------------------------------------------------------------------------


def test_resolution_order(tmp_path, monkeypatch, isolated_env):
    reg = small_registry()
    explicit = tmp_path / "explicit"
    env = tmp_path / "env"
    for root in (explicit, env, isolated_env.cache):
        write_files(root / "wikitext-2-raw", WIKI)
    monkeypatch.setenv("QSLM_DATA_DIR", str(env))
    kw = dict(download=False, registry=reg)
    assert resolve("wikitext-2-raw", explicit, **kw) == explicit / "wikitext-2-raw"
    assert resolve("wikitext-2-raw", None, **kw) == env / "wikitext-2-raw"
    monkeypatch.delenv("QSLM_DATA_DIR")
    assert resolve("wikitext-2-raw", None, **kw) == isolated_env.cache / "wikitext-2-raw"
    # An explicit dir or env dir without the data set is skipped: the next place is used.
    monkeypatch.setenv("QSLM_DATA_DIR", str(tmp_path / "empty-env"))
    assert resolve("wikitext-2-raw", tmp_path / "empty", **kw) == isolated_env.cache / "wikitext-2-raw"
    monkeypatch.setenv("QSLM_DATA_DIR", str(env))
    assert resolve("wikitext-2-raw", tmp_path / "empty", **kw) == env / "wikitext-2-raw"


def test_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = write_files(tmp_path / "xdg" / "qslm" / "data" / "wikitext-2-raw", WIKI)
    assert dsm.default_cache_dir() == tmp_path / "xdg" / "qslm" / "data"
    assert resolve("wikitext2", download=False, registry=small_registry()) == folder


def test_relative_env_dir(tmp_path, monkeypatch):
    write_files(tmp_path / "data" / "sst2", SST2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QSLM_DATA_DIR", "data")  # CI passes a relative path
    assert resolve("sst2", download=False, registry=small_registry()).resolve() == (tmp_path / "data" / "sst2")


def test_data_dir_may_be_the_dataset_folder_or_the_glue_name(tmp_path):
    reg = small_registry()
    folder = write_files(tmp_path / "anything", WIKI)
    assert resolve("wikitext-2-raw", folder, download=False, registry=reg) == folder
    glue = write_files(tmp_path / "glue_data" / "SST-2", SST2)
    assert resolve("sst2", tmp_path / "glue_data", download=False, registry=reg) == glue


def test_missing_data_lists_every_place(tmp_path, monkeypatch, isolated_env):
    monkeypatch.setenv("QSLM_DATA_DIR", str(tmp_path / "env"))
    partial = write_files(tmp_path / "explicit" / "sst2", {"train.tsv": SST2["train.tsv"]})
    with pytest.raises(DataNotFoundError) as info:
        resolve("sst2", tmp_path / "explicit", download=False, registry=small_registry())
    msg = str(info.value)
    assert "'sst2' not found" in msg
    assert f"--data-dir (data_dir=): {partial} lacks dev.tsv, test.tsv" in msg
    assert f"$QSLM_DATA_DIR: {tmp_path / 'env'} does not exist" in msg
    assert f"the user cache: {isolated_env.cache} does not exist" in msg
    assert "download from http://127.0.0.1:9/SST-2.zip: disabled (download=False)" in msg
    assert "--data-dir DIR" in msg and "QSLM_DATA_DIR=DIR" in msg and "download=True" in msg
    assert not isinstance(info.value, DownloadError)


def test_missing_data_nothing_given(isolated_env):
    with pytest.raises(DataNotFoundError) as info:
        resolve("wikitext-2-raw", download=False)
    msg = str(info.value)
    assert "--data-dir (data_dir=): not given" in msg and "$QSLM_DATA_DIR: not set" in msg
    assert "1." in msg and "4." in msg and "wiki.train.raw, wiki.valid.raw, wiki.test.raw" in msg


def test_corrupt_file_message(tmp_path):
    reg = small_registry()
    folder = write_files(tmp_path / "d" / "wikitext-2-raw", WIKI)
    bad = " \n = Robert Boulter = \n changed \n"
    (folder / "wiki.test.raw").write_text(bad)
    with pytest.raises(ChecksumError) as info:
        resolve("wikitext-2-raw", tmp_path / "d", download=False, registry=reg)
    msg = str(info.value)
    assert str(folder / "wiki.test.raw") in msg and "--data-dir" in msg
    assert f"expected sha256 {sha(WIKI['wiki.test.raw'])}" in msg
    assert f"actual   sha256 {sha(bad)} ({len(bad)} bytes)" in msg
    assert "Fix: replace it with the official file" in msg
    # verify=False accepts a modified copy.
    assert resolve("wikitext-2-raw", tmp_path / "d", download=False, registry=reg, verify=False) == folder


def test_corrupt_file_in_cache_says_delete(isolated_env):
    reg = small_registry()
    folder = write_files(isolated_env.cache / "sst2", {**SST2, "dev.tsv": "sentence\tlabel\n"})
    with pytest.raises(ChecksumError, match=rf"delete {re.escape(str(folder))} and run again"):
        resolve("sst2", registry=reg)


def test_checksums_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    reg = small_registry()
    folder = write_files(tmp_path / "wikitext-2-raw", WIKI)
    calls = []
    real = dsm._sha256_of
    monkeypatch.setattr(dsm, "_sha256_of", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        resolve("wikitext-2-raw", tmp_path, download=False, registry=reg)
    assert len(calls) == 3  # once per file
    (folder / "wiki.valid.raw").write_text("tampered\n")
    with pytest.raises(ChecksumError, match="wiki.valid.raw"):
        resolve("wikitext-2-raw", tmp_path, download=False, registry=reg)


# --- downloads ----------------------------------------------------------------------------------


def test_download_zip(server, isolated_env):
    reg = small_registry(server.url, archive_sha=sha(WIKI_ZIP))
    folder = resolve("wikitext-2-raw", registry=reg, progress=False)
    assert folder == isolated_env.cache / "wikitext-2-raw"
    for name, text in WIKI.items():
        assert (folder / name).read_bytes() == text.encode()
    assert all_paths(isolated_env.cache) == [folder, *sorted(folder / n for n in WIKI)]  # no leftovers
    assert server.requests == ["/wikitext-2-raw-v1.zip"]
    # Now it comes from the cache.
    assert load_wikitext2("test", registry=reg) == WIKI["wiki.test.raw"]
    assert resolve("wikitext-2-raw", registry=reg) == folder
    assert server.requests == ["/wikitext-2-raw-v1.zip"]


def test_download_sst2_checks_members(server, isolated_env):
    reg = small_registry(server.url)
    assert load_sst2("dev", registry=reg) == [
        ("it 's a charming and often affecting journey .", 1),
        ("unflinchingly bleak and desperate", 0),
    ]
    assert sorted(p.name for p in all_paths(isolated_env.cache)) == ["dev.tsv", "sst2", "test.tsv", "train.tsv"]


def test_download_single_file(server, isolated_env):
    reg = small_registry(server.url)
    assert load_text("tinyshakespeare", "all", registry=reg) == SHAKESPEARE
    cut = int(len(SHAKESPEARE) * 0.9)
    assert load_text("tinyshakespeare", "train", registry=reg) == SHAKESPEARE[:cut]
    assert load_text("tinyshakespeare", "validation", registry=reg) == SHAKESPEARE[cut:]
    assert all_paths(isolated_env.cache) == [isolated_env.cache / "tinyshakespeare",
                                             isolated_env.cache / "tinyshakespeare" / "input.txt"]


def test_download_completes_a_partial_cache(server, isolated_env):
    reg = small_registry(server.url, archive_sha=sha(WIKI_ZIP))
    write_files(isolated_env.cache / "wikitext-2-raw", {"wiki.test.raw": WIKI["wiki.test.raw"]})
    folder = resolve("wikitext-2-raw", registry=reg, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(WIKI)
    assert [p for p in isolated_env.cache.iterdir() if p.name.startswith(".")] == []


def _assert_nothing_left(cache: Path) -> None:
    assert all_paths(cache) == [], f"the failed download left {all_paths(cache)}"


def test_download_wrong_archive_checksum(server, isolated_env):
    reg = small_registry(server.url, archive_sha="0" * 64)
    with pytest.raises(DownloadError) as info:
        resolve("wikitext-2-raw", registry=reg, progress=False)
    msg = str(info.value)
    assert f"expected sha256 {'0' * 64}, got sha256 {sha(WIKI_ZIP)}" in msg
    assert "download from" in msg and "failed" in msg and "--data-dir DIR" in msg
    assert isinstance(info.value, DataNotFoundError)
    _assert_nothing_left(isolated_env.cache)


def test_download_wrong_member_checksum(server, isolated_env):
    reg = small_registry(server.url)
    (server.root / "SST-2.zip").write_bytes(zip_bytes({**{f"SST-2/{n}": t for n, t in SST2.items()},
                                                       "SST-2/dev.tsv": "sentence\tlabel\nx \t1\n"}))
    with pytest.raises(DownloadError, match=r"member SST-2/dev.tsv .* does not match the official file"):
        resolve("sst2", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


def test_download_missing_member(server, isolated_env):
    reg = small_registry(server.url)
    (server.root / "SST-2.zip").write_bytes(zip_bytes({"SST-2/train.tsv": SST2["train.tsv"]}))
    with pytest.raises(DownloadError, match="no member 'SST-2/dev.tsv'"):
        resolve("sst2", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


def test_download_not_a_zip(server, isolated_env):
    reg = small_registry(server.url)
    (server.root / "SST-2.zip").write_text("<html>not found</html>")
    with pytest.raises(DownloadError, match="not a zip archive"):
        resolve("sst2", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


def test_download_http_404(server, isolated_env):
    reg = small_registry(server.url + "missing/")
    with pytest.raises(DownloadError, match=r"HTTP 404") as info:
        resolve("wikitext-2-raw", registry=reg, progress=False)
    assert "the user cache" in str(info.value)
    _assert_nothing_left(isolated_env.cache)


def test_download_truncated(server, isolated_env):
    reg = small_registry(server.url + "truncated/")
    with pytest.raises(DownloadError, match=r"incomplete download .* got [\d,]+ of [\d,]+ bytes"):
        resolve("tinyshakespeare", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


def test_download_connection_refused(isolated_env):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = small_registry(f"http://127.0.0.1:{port}/")
    with pytest.raises(DownloadError, match="could not download"):
        resolve("tinyshakespeare", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


def test_download_interrupted_leaves_nothing(server, isolated_env, monkeypatch):
    reg = small_registry(server.url, archive_sha=sha(WIKI_ZIP))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dsm, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve("wikitext-2-raw", registry=reg, progress=False)
    _assert_nothing_left(isolated_env.cache)


# --- loaders ------------------------------------------------------------------------------------


def test_load_wikitext2_exact_bytes(tmp_path):
    reg = small_registry()
    write_files(tmp_path / "wikitext-2-raw", WIKI)
    for split, name in [("train", "wiki.train.raw"), ("valid", "wiki.valid.raw"), ("validation", "wiki.valid.raw"),
                        ("test", "wiki.test.raw")]:
        assert load_wikitext2(split, tmp_path, download=False, registry=reg) == WIKI[name]
    assert load_text("wikitext-2-raw", "test", tmp_path, download=False, registry=reg) == WIKI["wiki.test.raw"]


def test_load_sst2_splits(tmp_path):
    reg = small_registry()
    write_files(tmp_path / "sst2", SST2)
    train = load_sst2("train", tmp_path, download=False, registry=reg)
    assert train == [("hide new secretions from the parental units", 0), ("contains no wit , only labored gags", 0),
                     ("that loves its characters", 1)]
    assert load_sst2("validation", tmp_path, download=False, registry=reg)[0][1] == 1
    assert load_sst2("test", tmp_path, download=False, registry=reg) == [
        ("uneasy mishmash of styles and genres .", -1),
        ("this film 's relationship to actual tension is the same .", -1),
    ]
    with pytest.raises(DatasetError, match="table"):
        load_text("sst2", "dev", tmp_path, download=False, registry=reg)


def test_read_sst2_keeps_quotes_literally(tmp_path):
    # No quoting: a '"' is an ordinary character (csv's default dialect would eat it).
    p = tmp_path / "x.tsv"
    p.write_text('sentence\tlabel\n"quoted" movie \t1\n')
    assert read_sst2_tsv(p) == [('"quoted" movie', 1)]


@pytest.mark.parametrize(
    "content, match",
    [
        pytest.param("sentence,label\nx,1\n", r"x.tsv:1: unexpected header", id="bad-header"),
        pytest.param("sentence\tlabel\ngood \t1\nbad \t2\n", r"x.tsv:3: label must be 0 or 1", id="bad-label"),
        pytest.param("sentence\tlabel\na \tb\t1\n", r"x.tsv:2: expected 2 tab-separated fields, got 3", id="3-fields"),
        pytest.param("index\tsentence\n0\ta\n2\tb\n", r"x.tsv:3: expected index 1", id="index-gap"),
        pytest.param("", r"empty", id="empty"),
    ],
)
def test_read_sst2_errors(tmp_path, content, match):
    p = tmp_path / "x.tsv"
    p.write_text(content)
    with pytest.raises(DatasetError, match=match):
        read_sst2_tsv(p)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes(b"sentence\tlabel\n\xff \t1\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_sst2_tsv(p)


# --- the real data (QSLM_DATA_DIR) --------------------------------------------------------------


@needs_real_data
def test_real_registry_matches_readme():
    readme = (Path(REAL_DATA_DIR) / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| ([\d,]+) \| [^|]+ \| `([0-9a-f]{64})` \|$", readme, flags=re.M)
    assert len(rows) == 7
    registered = {f"{ds.dirname}/{f.name}": (f.size_bytes, f.sha256) for ds in DATASETS.values() for f in ds.files}
    assert registered == {path: (int(size.replace(",", "")), digest) for path, size, digest in rows}


@needs_real_data
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_real_checksums(name):
    folder = resolve(name, REAL_DATA_DIR, download=False)
    assert folder == Path(REAL_DATA_DIR) / DATASETS[name].dirname
    for f in DATASETS[name].files:  # independent of the memo: hash here
        assert hashlib.sha256((folder / f.name).read_bytes()).hexdigest() == f.sha256


@needs_real_data
def test_real_sst2_counts():
    train = load_sst2("train", REAL_DATA_DIR, download=False)
    dev = load_sst2("dev", REAL_DATA_DIR, download=False)
    test = load_sst2("test", REAL_DATA_DIR, download=False)
    assert (len(train), sum(label for _, label in train)) == (67_349, 37_569)
    assert (len(dev), sum(label for _, label in dev)) == (872, 444)
    assert len(test) == 1_821 and {label for _, label in test} == {-1}
    assert all(s and s == s.strip() for s, _ in train + dev + test)
    assert dev[0] == ("it 's a charming and often affecting journey .", 1)


@needs_real_data
def test_real_wikitext2_counts():
    expected = {"train": (36_718, 10_918_892), "valid": (3_760, 1_144_748), "test": (4_358, 1_288_556)}
    for split, (lines, chars) in expected.items():
        text = load_wikitext2(split, REAL_DATA_DIR, download=False)
        assert (text.count("\n"), len(text)) == (lines, chars)
    assert text.startswith(" \n = Robert Boulter = \n")


@needs_real_data
def test_real_tinyshakespeare():
    text = load_text("tinyshakespeare", "all", REAL_DATA_DIR, download=False)
    assert len(text) == 1_115_394 and text.count("\n") == 40_000 and len(set(text)) == 65
    train = load_text("tinyshakespeare", "train", REAL_DATA_DIR, download=False)
    valid = load_text("tinyshakespeare", "valid", REAL_DATA_DIR, download=False)
    assert train + valid == text and len(train) == 1_003_854
