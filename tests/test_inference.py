"""The inference API: a checkpoint file alone rebuilds the model; predict takes any image form."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tlcore.checkpoint import read_checkpoint
from tlcore.data import build_transform, to_rgb
from tlcore.errors import DataError, WeightsError
from tlcore.inference import find_images, load_checkpoint, predict_files
from tlcore.train import fit


@pytest.fixture
def run(host, tiny_config):
    return fit(tiny_config(epochs=1, callbacks="-progress"), host)


def square(corner: str, size=(20, 28)) -> np.ndarray:
    """An RGB array shaped like the tiny dataset's classes: a bright top-left or bottom-right quarter."""
    pixels = np.random.default_rng(1).integers(0, 60, (*size, 3), dtype=np.uint8)
    h, w = size[0] // 2, size[1] // 2
    if corner == "top_left":
        pixels[:h, :w] += 180
    else:
        pixels[h:, w:] += 180
    return pixels


def test_checkpoint_alone_rebuilds_the_trained_model(run, host):
    predictor = load_checkpoint(run.output_dir / "best.safetensors", device="cpu", host=host)
    assert not predictor.model.training
    assert predictor.classes == ["top_left", "bottom_right"] and predictor.image_size == 16
    assert predictor.preprocessing.mean == (0.5, 0.5, 0.5)
    tensors, _ = read_checkpoint(run.output_dir / "best.safetensors")
    state = predictor.model.state_dict()
    assert set(state) == set(tensors) and all(torch.equal(state[k], tensors[k]) for k in tensors)


def test_predict_accepts_every_image_form(run, host, tmp_path):
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    pixels = square("top_left")
    Image.fromarray(pixels).save(tmp_path / "a.png")
    as_uint8 = torch.from_numpy(pixels).permute(2, 0, 1)
    forms = [
        Image.fromarray(pixels),
        Image.fromarray(pixels).convert("RGBA"),
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        as_uint8,
        as_uint8.float() / 255,
    ]
    results = predictor.predict(forms, top_k=2)
    reference = results[0]
    assert [r.source for r in results[2:4]] == [str(tmp_path / "a.png")] * 2 and results[4].source == "#4"
    for index, result in enumerate(results):
        assert result.labels == reference.labels
        # the float image is resized in float, the others in uint8 (rounded): a hair apart
        assert result.probabilities == pytest.approx(reference.probabilities, abs=1e-3 if index == 5 else 1e-6)
        assert sum(result.probabilities) == pytest.approx(1.0)
    # the same numbers as the model on the validation transform by hand
    transform = build_transform(predictor.preprocessing, 16, train=False, augment="none", flip=False)
    with torch.no_grad():
        expected = predictor.calibrated(transform(to_rgb(Image.fromarray(pixels)))[None]).softmax(1)[0]
    assert reference.probabilities[0] == pytest.approx(float(expected.max()), abs=1e-6)
    # other modes and sizes, a batch tensor, one image alone, top_k above the class count
    gray = Image.fromarray(square("bottom_right", (9, 40))[:, :, 0], "L")
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 200)
    assert sixteen.mode.startswith("I;16")
    assert len(predictor.predict([gray, gray.convert("P"), sixteen], top_k=1, batch_size=2)) == 3
    assert len(predictor.predict(torch.stack([as_uint8, as_uint8]))) == 2
    single = predictor.predict(Image.fromarray(pixels), top_k=10)
    assert (
        len(single) == 1 and len(single[0].labels) == 2 and single[0].to_dict()["predictions"][0]["class"] == single[0].label
    )


def test_predict_rejects_what_is_not_an_image(run, host, tmp_path):
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="cannot read image .*bad.jpg"):
        predictor.predict(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match="uint8"):
        predictor.predict(torch.zeros(3, 8, 8, dtype=torch.int64))
    with pytest.raises(DataError, match="cannot classify a dict"):
        predictor.predict([{}])


def test_not_a_checkpoint_is_a_clear_error(run, host, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors", host=host)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match="not a tlcore checkpoint"):
        load_checkpoint(tmp_path / "plain.pth", host=host)
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a tlcore checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors", host=host)
    data = (run.output_dir / "best.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "cut.safetensors", host=host)


def test_a_checkpoint_missing_a_tensor_is_refused(run, host, tmp_path):
    from safetensors import safe_open

    source = run.output_dir / "best.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    tensors.pop("head.0.bias")
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata=metadata)
    with pytest.raises(WeightsError, match="missing: head.0.bias"):
        load_checkpoint(tmp_path / "partial.safetensors", host=host)


def test_find_images_searches_folders_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/one.JPG", "a/b/two.png", "a/notes.txt", ".hidden/three.png", "a/.four.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "named.dat").write_bytes(b"")
    found = find_images([tmp_path / "a", tmp_path / "named.dat"])
    assert found == [tmp_path / "a" / "b" / "two.png", tmp_path / "a" / "one.JPG", tmp_path / "named.dat"]
    (tmp_path / "c" / ".git").mkdir(parents=True)
    (tmp_path / "c" / ".git" / "five.png").write_bytes(b"")
    (tmp_path / "c" / "readme.md").write_bytes(b"")
    with pytest.raises(DataError, match=r"no images found in .*c \(looked for .jpg"):
        find_images([tmp_path / "c"])
    with pytest.raises(DataError, match="does not exist"):
        find_images([tmp_path / "nowhere"])


def test_predict_files_skips_unreadable_files_by_name(run, host, tmp_path):
    predictor = load_checkpoint(run.output_dir, device="cpu", host=host)
    Image.fromarray(square("top_left")).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    warnings = []
    results = list(predict_files(predictor, [tmp_path / "bad.png", tmp_path / "good.png"], 1, 1, warnings.append))
    assert [r.source for r in results] == [str(tmp_path / "good.png")]
    assert len(warnings) == 1 and "bad.png" in warnings[0]
    with pytest.raises(DataError, match="bad.png"):  # the one file's own reason, not a second warning
        list(predict_files(predictor, [tmp_path / "bad.png"], warn=warnings.append))
    assert len(warnings) == 1
    with pytest.raises(DataError, match=r"none of the 2 images could be read \(.*bad.png"):
        list(predict_files(predictor, [tmp_path / "bad.png", tmp_path / "bad.png"]))
