"""Hub failures become one line saying what to do: simulated without the network (offline mode, raised errors)."""

import datasets.config
import huggingface_hub.constants
import pytest
from datasets.exceptions import DatasetNotFoundError

from lora_lab.runtime import hub, profiles
from lora_lab.training import data, models


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The Hub unreachable and an empty cache: huggingface_hub and datasets refuse to download anything."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message and err.__cause__ is None and err.__suppress_context__
    return message


def test_an_unreachable_hub_names_the_model_and_what_to_do(offline):
    with pytest.raises(hub.HubUnavailable) as info:
        models.load_model_and_tokenizer(profiles.get_profile("t4"), "lora", model_path="nobody/not-cached-model")
    message = one_line(info.value)
    assert "nobody/not-cached-model" in message and "not in the local cache" in message
    assert "LORA_LAB_PROFILE=cpu" in message


def test_an_unreachable_hub_names_the_dataset_and_what_to_do(offline):
    with pytest.raises(hub.HubUnavailable) as info:
        data.load_hub_dataset("nobody/not-cached-dataset")
    message = one_line(info.value)
    assert message.startswith("Could not download the dataset nobody/not-cached-dataset")


def test_a_gated_model_says_accept_the_terms_and_add_a_token():
    class GatedRepoError(OSError):  # huggingface_hub's class name; transformers wraps it in an OSError
        pass

    def gated(*_):
        try:
            raise GatedRepoError("401 Client Error")
        except GatedRepoError as err:
            raise OSError("You are trying to access a gated repo.") from err

    with pytest.raises(hub.HubUnavailable) as info, hub.hub_errors("meta-llama/Llama-3.2-1B", "model"):
        gated()
    message = one_line(info.value)
    assert "gated" in message and "https://huggingface.co/meta-llama/Llama-3.2-1B" in message and "HF_TOKEN" in message


def test_a_gated_or_missing_dataset_from_the_loader():
    def gated_loader(*_):
        raise DatasetNotFoundError("Dataset 'org/x' is a gated dataset on the Hub. You must be authenticated to access it.")

    with pytest.raises(hub.HubUnavailable, match=r"gated .*https://huggingface.co/datasets/org/x"):
        data.load_hub_dataset("org/x", loader=gated_loader)

    def missing_loader(*_):
        raise DatasetNotFoundError("Dataset 'org/typo' doesn't exist on the Hub or cannot be accessed.")

    with pytest.raises(hub.HubUnavailable, match="has no dataset org/typo, or it is private"):
        data.load_hub_dataset("org/typo", loader=missing_loader)


def test_other_errors_and_local_paths_pass_through_unchanged(tmp_path):
    def bad_config(*_):
        raise ValueError("BuilderConfig 'nope' not found.")

    with pytest.raises(ValueError, match="BuilderConfig"):
        data.load_hub_dataset("org/x", "nope", loader=bad_config)
    with pytest.raises(FileNotFoundError, match="local"), hub.hub_errors(str(tmp_path), "model"):
        raise FileNotFoundError("local folder has no config.json; could not connect")


class FakeResponse:
    def __init__(self, status_code):
        self.status_code = status_code


@pytest.mark.parametrize("status, words", [
    (429, ["HTTP 429", "wait a few minutes", "HF_TOKEN"]), (503, ["HTTP 503", "status.huggingface.co", "LORA_LAB_PROFILE=cpu"]),
    (401, ["gated", "HF_TOKEN"]), (403, ["gated"]), (404, ["has no model", "or it is private"]),
])
def test_each_http_failure_is_one_line_with_what_to_do(status, words):
    class HfHubHTTPError(OSError):  # huggingface_hub's error carries the response
        def __init__(self, message, response):
            super().__init__(message)
            self.response = response

    def fail():
        try:
            raise HfHubHTTPError(f"{status} Client Error", FakeResponse(status))
        except HfHubHTTPError as err:
            raise OSError("Can't load the configuration") from err

    with pytest.raises(hub.HubUnavailable) as info, hub.hub_errors("org/model", "model"):
        fail()
    message = one_line(info.value)
    assert all(word in message for word in words), message


def test_the_cpu_profile_advice_says_where_the_cell_goes():
    assert "new first cell `%env LORA_LAB_PROFILE=cpu`" in hub.CPU_PROFILE_HOWTO and "Restart session" in hub.CPU_PROFILE_HOWTO
