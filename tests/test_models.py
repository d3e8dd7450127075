"""The model factory, the kdlab zoo in timm, feature taps, checkpoints."""

import pytest
import timm
import torch

from kdlab.errors import KdlabError
from kdlab.models import FeatureTaps, count_params, create_model, module_paths
from kdlab.models.checkpoint import load_weights, save_weights


@pytest.mark.parametrize(("arch", "params"), [("cnn1d", 5210), ("mlp", 15210), ("logistic", 410)])
def test_mnist1d_paper_models_have_the_papers_sizes(arch, params):
    assert count_params(create_model(arch, 10, (1, 40))) == params


@pytest.mark.parametrize("arch", ["logistic", "mlp", "cnn1d", "cnn_tiny", "cnn_small", "cnn_medium"])
def test_zoo_follows_timm_contract(arch):
    model = timm.create_model(arch, num_classes=7, in_chans=1, input_size=(40,))
    x = torch.randn(3, 1, 40)
    feats = model.forward_features(x)
    assert feats.shape == (3, model.num_features)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True) is feats
    assert model(x).shape == (3, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(4)
    assert model(x).shape == (3, 4)


@pytest.mark.parametrize("arch", ["cnn_tiny", "cnn_small", "mlp"])
def test_zoo_builds_2d_models_for_images(arch):
    model = create_model(arch, 10, (1, 8, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_timm_models_build_through_the_factory():
    model = create_model("resnet18", 10, (1, 16, 16))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_unknown_arch_names_the_closest_valid_ones():
    with pytest.raises(KdlabError, match=r"unknown model 'resnt18'.*closest: .*resnet18"):
        create_model("resnt18", 10, (1, 40))
    with pytest.raises(KdlabError, match=r"unknown model 'cnn1'.*cnn1d"):
        create_model("cnn1", 10, (1, 40))


def test_model_that_cannot_take_the_data_fails_clearly():
    with pytest.raises(KdlabError, match=r"resnet18 cannot take inputs of shape \(1, 40\).*1-D sequences"):
        create_model("resnet18", 10, (1, 40))


def test_pretrained_without_local_file_fails_clearly_offline():
    with pytest.raises(KdlabError, match="pretrained"):
        create_model("resnet18", 10, (3, 32, 32), pretrained=True)


def test_taps_record_features_by_module_path():
    model = create_model("cnn1d", 10, (1, 40))
    taps = FeatureTaps(model, ["conv2", "conv3"])
    model(torch.randn(4, 1, 40))
    feats = taps.pop()
    assert feats["conv2"].shape == (4, 25, 10) and feats["conv3"].shape == (4, 25, 5)
    assert taps.features == {}  # popped
    taps.remove()
    model(torch.randn(4, 1, 40))
    assert taps.features == {}


def test_taps_work_on_timm_models():
    model = create_model("resnet18", 10, (1, 16, 16))
    taps = FeatureTaps(model, ["layer3", "layer4.1"])
    model(torch.randn(2, 1, 16, 16))
    assert taps.features["layer3"].shape[:2] == (2, 256) and taps.features["layer4.1"].shape[:2] == (2, 512)


def test_bad_tap_path_lists_valid_paths():
    model = create_model("cnn1d", 10, (1, 40))
    with pytest.raises(
        KdlabError,
        match=r"student has no module 'conv9' \(closest: conv[123].*valid tap paths: conv1, conv2, conv3, head",
    ):
        FeatureTaps(model, ["conv9"], owner="student")
    assert "conv1.0" in module_paths(model)


def test_models_with_taps_still_pickle():
    import pickle

    model = create_model("cnn1d", 10, (1, 40))
    FeatureTaps(model, ["conv1"])
    clone = pickle.loads(pickle.dumps(model))
    assert clone(torch.randn(1, 1, 40)).shape == (1, 10)


def test_safetensors_round_trip_and_metadata_checks(tmp_path):
    model = create_model("cnn1d", 10, (1, 40), channels=8)
    path = save_weights(model, tmp_path / "m.safetensors", "cnn1d", 10, (1, 40), {"channels": 8})
    loaded = load_weights(path, "cnn1d", 10, (1, 40))  # kwargs come from the metadata
    x = torch.randn(2, 1, 40)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(KdlabError, match="holds a cnn1d, but teacher.arch=mlp"):
        load_weights(path, "mlp", 10, (1, 40), role="teacher")
    with pytest.raises(KdlabError, match="predicts 10 classes but the data has 100"):
        load_weights(path, "cnn1d", 100, (1, 40), role="teacher")


def test_torch_checkpoints_load_with_weights_only(tmp_path):
    model = create_model("mlp", 10, (1, 40))
    torch.save({"state_dict": {f"student.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "last.ckpt")
    loaded = load_weights(tmp_path / "last.ckpt", "mlp", 10, (1, 40))
    x = torch.randn(2, 1, 40)
    torch.testing.assert_close(loaded(x), model(x))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_never_run_code(tmp_path):
    torch.save({"state_dict": {}, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(KdlabError, match="cannot load .* safely"):
        load_weights(tmp_path / "evil.pt", "mlp", 10, (1, 40))


def test_corrupt_and_missing_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(KdlabError, match="corrupt"):
        load_weights(bad, "mlp", 10, (1, 40), role="teacher")
    with pytest.raises(KdlabError, match="teacher checkpoint .* not found"):
        load_weights(tmp_path / "nope.safetensors", "mlp", 10, (1, 40), role="teacher")
    model = create_model("mlp", 10, (1, 40))
    path = save_weights(model, tmp_path / "mlp.safetensors", "mlp", 10, (1, 40))
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(KdlabError):
        load_weights(path, "mlp", 10, (1, 40))
