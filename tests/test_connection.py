"""Choosing models and tiers (helpers.connection): aliases, embedding models, SLM_SMALL_MODEL, the
large tier's stand-in - and that a server which never answers cannot hang a call."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import BUNDLED, free_port, start_server, stop_server
from helpers.backends import EmbeddedBackend, ModelInfo, OllamaBackend, OpenAIBackend
from helpers.bench import choose_models
from helpers.connection import connect_large, is_embedding_model, match_model, pick_model, rank_large
from helpers.errors import BackendUnavailable, CourseError, MissingKey, ModelNotFound
from helpers.registry import BUNDLED_MODEL, PREFERENCE, course_order
from helpers.serving.weights import local_model_path, local_models

#: What `ollama list` shows after `ollama pull all-minilm mistral phi3 llama3.2 nomic-embed-text`.
PULLED = ["all-minilm:latest", "llama3.2:latest", "mistral:latest", "nomic-embed-text:latest", "phi3:latest"]
#: The same, as /api/tags describes them (sizes and details of the Ollama library's tags).
PULLED_TAGS = [
    ModelInfo("all-minilm:latest", 45_960_996, "bert", ("bert",), "23M"),
    ModelInfo("llama3.2:latest", 2_019_393_189, "llama", ("llama",), "3.2B"),
    ModelInfo("mistral:latest", 4_113_301_824, "llama", ("llama",), "7.2B"),
    ModelInfo("nomic-embed-text:latest", 274_302_450, "nomic-bert", ("nomic-bert",), "137M"),
    ModelInfo("phi3:latest", 2_176_178_913, "phi3", ("phi3",), "3.8B"),
]


class Listed:
    """A stand-in that only lists models (nothing is generated): for the choice logic alone."""

    name = "ollama"

    def __init__(self, models):
        self.models = list(models)

    def list_models(self):
        return [m.name if isinstance(m, ModelInfo) else m for m in self.models]

    def list_model_info(self):
        return [m if isinstance(m, ModelInfo) else ModelInfo(m) for m in self.models]

    def describe(self):
        return "test server"


@pytest.fixture(autouse=True)
def _no_small_model_setting(monkeypatch):
    monkeypatch.delenv("SLM_SMALL_MODEL", raising=False)


@pytest.fixture(scope="module")
def server() -> OllamaBackend:
    return OllamaBackend(os.environ["OLLAMA_HOST"])


# --------------------------------------------------------------------------- names (pure)
@pytest.mark.parametrize(
    "wanted,have",
    [
        ("mistral:7b", "mistral:latest"),  # registry alias
        ("llama3.2:3b", "llama3.2:latest"),  # registry alias
        ("mistral", "mistral:latest"),  # :latest added
        ("phi3:latest", "phi3:latest"),  # exact
        ("llama3.2:1b", None),  # llama3.2:latest is the 3B
        ("gemma:2b", None),
        ("no-such-model", None),
    ],
)
def test_match_model_on_the_names_ollama_pull_gives(wanted, have):
    assert match_model(wanted, PULLED) == have


def test_match_model_uses_the_reported_size_only_within_the_same_library_name():
    assert match_model("phi3:mini", PULLED_TAGS) == "phi3:latest"  # 3.8B, like the card
    tags = [
        ModelInfo("gemma:latest", 5_011_853_225, "gemma", ("gemma",), "9B"),
        ModelInfo("phi4-mini:latest", 2_491_876_774, "phi3", ("phi3",), "3.8B"),
    ]
    assert match_model("gemma:7b", tags) == "gemma:latest"
    assert match_model("gemma:2b", tags) is None, "gemma:latest is the 7B, not the 2B"
    assert match_model("phi3:mini", tags) is None, "phi4-mini has phi3's family and size, not its name"


def test_embedding_models_are_recognised_by_name_or_family():
    for name in (
        "all-minilm:latest",
        "nomic-embed-text:latest",
        "mxbai-embed-large",
        "bge-m3:latest",
        "snowflake-arctic-embed:22m",
        "jeffh/intfloat-multilingual-e5-large:f16",
    ):
        assert is_embedding_model(name), name
    for name in ("mistral:latest", "phi3:mini", "smollm2:135m", "gemma3:1b", "qwen2.5:0.5b"):
        assert not is_embedding_model(name), name
    assert is_embedding_model(ModelInfo("my-encoder:latest", family="nomic-bert"))
    assert is_embedding_model(ModelInfo("granite:latest", families=("bert",)))


def test_pick_model_and_choose_models_take_aliases_and_never_an_embedding_model(capsys):
    only_pulled = Listed(PULLED)
    assert pick_model(only_pulled, "mistral:7b") == "mistral:latest"
    assert "Using model mistral:latest (asked for: mistral:7b)" in capsys.readouterr().out
    # nothing asked: the article's models first, under the server's names
    assert pick_model(Listed(PULLED_TAGS), verbose=False) == "phi3:latest"  # phi3:mini
    assert (
        pick_model(Listed(["all-minilm:latest", "llama3.2:latest", "mistral:latest"]), verbose=False)
        == "mistral:latest"
    )  # mistral:7b before llama3.2:3b
    # no course model at all: the first chat model, never all-minilm (first alphabetically)
    unknown = Listed(["all-minilm:latest", "nomic-embed-text:latest", "zephyr:latest"])
    assert pick_model(unknown, verbose=False) == "zephyr:latest"
    assert pick_model(unknown, "all-minilm") == "zephyr:latest"
    out = capsys.readouterr().out
    assert "all-minilm:latest is an embedding model" in out and "cannot chat" in out
    with pytest.raises(ModelNotFound, match="only embedding models") as err:
        pick_model(Listed(["all-minilm:latest"]), verbose=False)
    assert "ollama pull" in err.value.hint
    # lesson 03's benchmark: course models under the server's names, embedding models left out
    assert choose_models(Listed(PULLED_TAGS), verbose=False) == ["phi3:latest", "mistral:latest", "llama3.2:latest"]
    assert sorted(choose_models(only_pulled, verbose=False)) == ["llama3.2:latest", "mistral:latest", "phi3:latest"]
    assert choose_models(only_pulled, ["mistral:7b", "nomic-embed-text"], verbose=False) == ["mistral:latest"]
    with pytest.raises(ModelNotFound, match="no chat model"):
        choose_models(Listed(["all-minilm:latest", "nomic-embed-text:latest"]), verbose=False)


@pytest.mark.parametrize(
    "models",
    [
        PULLED,
        PULLED_TAGS,
        ["zephyr:latest", "all-minilm:latest"],
        ["qwen2.5-coder:0.5b", BUNDLED, "llama3.2:1b"],
        ["gemma:latest", "tinyllama"],
    ],
)
def test_pick_model_and_the_benchmark_rank_a_server_the_same_way(models, capsys):
    """One ranking (registry.course_order): the lesson's model is the benchmark's first."""
    listed = Listed(models)
    ranked = course_order(listed.list_model_info())
    assert pick_model(listed) == choose_models(listed, limit=len(models), verbose=False)[0] == ranked[0]
    first_line = capsys.readouterr().out.splitlines()[0]
    in_course = any(match_model(p, listed.list_model_info()) == ranked[0] for p in PREFERENCE)
    assert ("the first of the course's models" in first_line) is in_course, first_line


def test_slm_small_model_is_the_default_choice(monkeypatch, capsys):
    three = Listed(["llama3.2:1b", "phi3:mini", BUNDLED])
    assert pick_model(three, verbose=False) == "phi3:mini"  # the course's order without the setting
    monkeypatch.setenv("SLM_SMALL_MODEL", "llama3.2:1b")
    assert pick_model(three) == "llama3.2:1b"
    assert "(SLM_SMALL_MODEL: llama3.2:1b)" in capsys.readouterr().out
    assert pick_model(three, "phi3:mini", verbose=False) == "phi3:mini", "an explicit choice wins"
    monkeypatch.setenv("SLM_SMALL_MODEL", "mistral:7b")
    assert pick_model(Listed(PULLED), verbose=False) == "mistral:latest"
    monkeypatch.setenv("SLM_SMALL_MODEL", "no-such-model:1b")
    assert pick_model(three) == "phi3:mini"
    assert "Not available here (from SLM_SMALL_MODEL): no-such-model:1b" in capsys.readouterr().out


def test_slm_small_model_on_the_server_answers(server, monkeypatch, capsys):
    monkeypatch.setenv("SLM_SMALL_MODEL", BUNDLED)
    model = pick_model(server)
    assert model == BUNDLED and "SLM_SMALL_MODEL" in capsys.readouterr().out
    r = server.generate(model, "Say hello.", options={"temperature": 0, "seed": 1, "num_predict": 8})
    assert r.text.strip() and r.model == BUNDLED


def test_model_info_from_the_server_and_the_embedded_engine(server):
    weights = local_model_path(BUNDLED_MODEL).stat().st_size
    [info] = [i for i in server.list_model_info() if i.name == BUNDLED]
    assert info.size_bytes == weights and info.family == "llama"
    assert match_model(BUNDLED, [info]) == BUNDLED and not is_embedding_model(info)
    local = {i.name: i for i in EmbeddedBackend().list_model_info()}
    assert set(local) == set(local_models())  # the bundled model and the installed offline ones
    assert local[BUNDLED].size_bytes == weights and local[BUNDLED].parameter_size == "135M"
    assert choose_models(server, [f"{BUNDLED}:latest", "no-such-model:1b"], verbose=False) == [BUNDLED]


# --------------------------------------------------------------------------- the large tier
def test_rank_large_is_by_size_on_disk_with_the_card_as_tie_break():
    tags = [
        ModelInfo("smollm2:135m", 100_000_000),
        ModelInfo("phi3:latest", 2_176_178_913),
        ModelInfo("qwen2.5:7b", 4_683_087_332),
        ModelInfo("nomic-embed-text:latest", 274_302_450),
    ]
    assert rank_large(tags) == ["qwen2.5:7b", "phi3:latest", "smollm2:135m"]
    # same size on disk: the registry's parameter count decides
    assert rank_large([ModelInfo("qwen2.5:0.5b", 10), ModelInfo("llama3.2:3b", 10)])[0] == "llama3.2:3b"
    # names only (an OpenAI-compatible list): parameters from the card, else from the tag
    assert rank_large(["smollm2:135m", "qwen2.5:7b", "llama3.2:1b"]) == ["qwen2.5:7b", "llama3.2:1b", "smollm2:135m"]
    assert rank_large(["all-minilm:latest"]) == []


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("SLM_LARGE_BASE_URL", "https://api.openai.com/v1")


def test_connect_large_without_a_key_warns_and_uses_the_biggest_local_model(server, no_key, capsys):
    with pytest.warns(UserWarning, match="no OPENAI_API_KEY: the large tier is the biggest local model"):
        connect_large(server, verbose=False)
    tier = connect_large(server)  # verbose: a printed line (a lesson shows one message, not two)
    biggest = max(local_models(), key=lambda m: local_model_path(m).stat().st_size)
    assert tier.local_fallback and tier.backend is server and tier.model == biggest
    assert "WARNING: no OPENAI_API_KEY" in capsys.readouterr().out
    r = tier.backend.generate(tier.model, "Say yes.", options={"temperature": 0, "num_predict": 4})
    assert r.metrics.output_tokens > 0
    with pytest.warns(UserWarning):
        tier = connect_large(Listed(PULLED_TAGS + [ModelInfo(BUNDLED, 100_000_000)]), verbose=False)
    assert tier.model == "mistral:latest"


def test_connect_large_without_any_chat_model_says_what_to_pull(no_key):
    for models in ([], ["all-minilm:latest", "nomic-embed-text:latest"]):
        with pytest.raises(ModelNotFound) as err:
            connect_large(Listed(models), verbose=False)
        assert "ollama pull" in err.value.hint and "OPENAI_API_KEY" in err.value.hint


def test_connect_large_with_a_key_answers_through_the_openai_client(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0123456789")
    monkeypatch.setenv("SLM_LARGE_BASE_URL", f"{server.host}/v1")
    monkeypatch.setenv("SLM_LARGE_MODEL", BUNDLED)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real large tier is no fallback: no warning
        tier = connect_large(verbose=False)
    assert isinstance(tier.backend, OpenAIBackend) and not tier.local_fallback
    assert tier.model == BUNDLED and tier.backend.base_url == f"{server.host}/v1"
    r = tier.backend.chat(
        tier.model,
        [{"role": "user", "content": "Name a colour."}],
        options={"temperature": 0, "seed": 1, "num_predict": 8},
    )
    assert r.text.strip() and r.backend == "openai" and r.metrics.output_tokens > 0


# --------------------------------------------------------------------------- nothing hangs
@pytest.fixture
def silent_endpoint(request):
    """A loopback port that accepts connections and never sends a byte back. Yields its URL; the
    connections it accepted are in `request.node.silent_connections` (each one is an attempt)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    request.node.silent_connections = held
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.generate(BUNDLED, "hello"),
        lambda b: b.chat(BUNDLED, [{"role": "user", "content": "hello"}]),
        lambda b: b.list_models(),
    ],
    ids=["generate", "chat", "list"],
)
def test_a_silent_ollama_server_times_out_with_the_next_step(silent_endpoint, call, request):
    backend = OllamaBackend(silent_endpoint, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        call(backend)
    waited = time.monotonic() - t0
    # one connection, given up after its 0.5 s read timeout (a busy machine only makes the wait longer)
    assert len(request.node.silent_connections) == 1
    assert waited >= 0.5
    assert "within 0.5 s" in err.value.message and "SLM_TIMEOUT" in err.value.hint


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.chat(BUNDLED, [{"role": "user", "content": "hello"}]),
        lambda b: b.list_models(),
    ],
    ids=["chat", "list"],
)
def test_a_silent_openai_endpoint_times_out_with_the_next_step(silent_endpoint, call, request):
    backend = OpenAIBackend(f"{silent_endpoint}/v1", api_key="sk-test", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(CourseError) as err:
        call(backend)
    waited = time.monotonic() - t0
    # the first try and one retry, each given up after its 0.5 s read timeout
    assert len(request.node.silent_connections) == 2, "one retry at most"
    assert waited >= 1
    assert isinstance(err.value, BackendUnavailable)
    assert "within 0.5 s" in err.value.message and "SLM_TIMEOUT" in err.value.hint


# --------------------------------------------------------------------------- a shared, keyed server
def test_the_ollama_key_from_settings_opens_a_keyed_server(monkeypatch, tmp_path):
    port = free_port()
    key = "class-key-0123456789abcdef"
    proc = start_server(port, "--api-key", key, log=tmp_path / "keyed.log")
    host = f"http://127.0.0.1:{port}"
    try:
        monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
        with pytest.raises(MissingKey) as err:
            OllamaBackend(host).list_models()
        assert "OLLAMA_API_KEY" in err.value.hint
        monkeypatch.setenv("OLLAMA_API_KEY", key)
        backend = OllamaBackend(host)
        assert pick_model(backend, verbose=False) == BUNDLED
        [info] = [i for i in backend.list_model_info() if i.name == BUNDLED]
        assert info.size_bytes == local_model_path(BUNDLED_MODEL).stat().st_size
    finally:
        stop_server(proc)
