"""Bad input about models, each refused in one line before anything trains: a method whose taps
cannot exist on the chosen models, a checkpoint of another architecture, a peer checkpoint with
missing keys. Nothing saved before is touched."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.models import create_model
from kdlab.models.checkpoint import save_weights


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    "method, says",
    [
        ("ofd", r"student \(MLP\) declares no pre-activation stages"),
        ("ab", r"student \(MLP\) declares no pre-activation stages"),
        ("fsp", r"FSP"),
        ("nst", r"NST"),
    ],
)
def test_a_method_whose_taps_cannot_exist_on_an_mlp_is_refused(train, method, says):
    with pytest.raises(KdlabError, match=says) as e:
        train([f"method={method}"])  # the default student is the MLP
    one_line(e)


def test_a_peer_checkpoint_with_missing_keys_is_refused_naming_them(train, tmp_path):
    good = create_model("cnn1d", 10, (1, 40))
    state = good.state_dict()
    del state["head.weight"], state["conv2.0.bias"]
    path = tmp_path / "peer.pth"
    torch.save(state, path)
    before = path.read_bytes()
    peers = f"strategy.peers=[{{}},{{arch:cnn1d,pretrained_path:{path}}}]"
    with pytest.raises(KdlabError, match=r"no (head\.weight|conv2\.0\.bias).*2 keys missing") as e:
        train(["strategy=online", "method=kd", peers])
    assert str(path) in one_line(e)
    assert path.read_bytes() == before  # nothing saved is lost


def test_a_peer_checkpoint_loads_into_the_peer(train, tmp_path):
    torch.manual_seed(1)
    good = create_model("cnn1d", 10, (1, 40))
    path = save_weights(good, tmp_path / "peer.safetensors", "cnn1d", 10, (1, 40))
    model = create_model("cnn1d", 10, (1, 40), pretrained_path=str(path), role="student")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), good.state_dict().values()))


def test_a_student_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = create_model("cnn_small", 10, (1, 40))
    path = tmp_path / "other.pth"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(KdlabError, match=r"cnn_small|student\.arch") as e:
        create_model("cnn1d", 10, (1, 40), pretrained_path=str(path), role="student")
    one_line(e)
