"""Hugging Face segmentation models: post-processing rules on hand-made outputs, and the real
architectures (tiny, random weights, saved with save_pretrained) end to end through
`clipclop patches build --segmentation model:FOLDER`, offline."""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clipclop_jax.cli import patches as cli_patches  # noqa: E402
from clipclop_jax.library import contact_sheet, segment_models  # noqa: E402
from clipclop_jax.library import maker as patch_maker  # noqa: E402
from clipclop_jax.library.file_formats import save_library  # noqa: E402
from clipclop_jax.library.load import load_library  # noqa: E402
from clipclop_jax.library.npz_reader import read_library_records  # noqa: E402
from clipclop_jax.library.patch_library import square_patch  # noqa: E402
from clipclop_jax.library.segment_outputs import (  # noqa: E402
    instance_regions,
    resolve_classes,
    semantic_regions,
)

LABELS = {0: "background", 1: "person", 2: "dog"}
SIDE = 32  # library squares: small and fast
# Curation and feathering off, so a cut-out is exactly the image under its mask.
PLAIN = ["--feather", "0", "--min-coverage", "0", "--dedupe", "0", "--max-aspect", "0"]
PLAIN += ["--min-width", "1", "--min-height", "1", "--side", str(SIDE), "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; several spin against each other on a busy CI
    machine (measured: this file took 69 s with torch's default threads, 23 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub library read its settings at import, maybe before this file set the variable."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- post-processing on hand-made outputs -------------------------------------------------


def _box(shape, top, bottom, left, right):
    mask = np.zeros(shape, bool)
    mask[top : bottom + 1, left : right + 1] = True
    return mask


def test_label_map_classes_split_into_connected_parts():
    labels = np.zeros((40, 40), np.int64)
    first = _box(labels.shape, 2, 9, 2, 9) | _box(labels.shape, 10, 14, 10, 14)  # diagonal touch
    second = _box(labels.shape, 25, 35, 3, 12)
    dog = _box(labels.shape, 20, 30, 20, 36)
    labels[first], labels[second], labels[dog] = 1, 1, 2
    labels[38:, 38:] = 1  # 4 pixels: under 0.5 % of the image, a speck
    confidence = np.ones(labels.shape, np.float32)

    regions = semantic_regions(labels, confidence, LABELS, class_ids=resolve_classes(LABELS, None))

    assert [r.label for r in regions] == ["person", "person", "dog"]
    for region, expected in zip(regions, (first, second, dog), strict=True):
        assert region.mask.dtype == np.uint8 and region.score == 1.0
        np.testing.assert_array_equal(region.mask, np.where(expected, 255, 0))


def test_semantic_scores_are_mean_confidence_and_filter():
    labels = np.zeros((40, 40), np.int64)
    labels[_box(labels.shape, 0, 9, 0, 19)] = 1
    labels[_box(labels.shape, 20, 29, 0, 19)] = 1
    labels[_box(labels.shape, 20, 29, 25, 35)] = 2
    confidence = np.full(labels.shape, 0.3, np.float32)
    confidence[0:5, 0:20], confidence[5:10, 0:20] = 0.8, 1.0  # first person: mean 0.9
    confidence[20:30, 25:36] = 0.7
    every = resolve_classes(LABELS, None)

    kept = semantic_regions(labels, confidence, LABELS, class_ids=every, min_score=0.5)
    assert [(r.label, round(r.score, 5)) for r in kept] == [("person", 0.9), ("dog", 0.7)]
    assert np.count_nonzero(kept[0].mask) == 200
    dogs = semantic_regions(labels, confidence, LABELS, class_ids=resolve_classes(LABELS, ["DOG"]))
    assert [r.label for r in dogs] == ["dog"]
    every_score = semantic_regions(labels, confidence, LABELS, class_ids=every, min_score=0.0)
    assert len(every_score) == 3


def test_class_names_resolve_case_insensitively_and_unknown_names_list_the_labels():
    id2label = {0: "N/A", 1: "person", 2: "N/A", 3: "Dog", 4: "background"}
    assert resolve_classes(id2label, None) == {1, 3}
    assert resolve_classes(id2label, ["dog", " Person "]) == {1, 3}
    assert resolve_classes(id2label, ["background"]) == {4}
    with pytest.raises(ValueError) as error:
        resolve_classes(id2label, ["person", "cat"])
    message = str(error.value)
    assert "\n" not in message and "'cat'" in message
    assert message.endswith("its labels are N/A, person, Dog, background.")


def _query(class_probabilities):
    """Class logits whose softmax is exactly these probabilities (last: no object)."""
    return np.log(np.asarray(class_probabilities, np.float64))


def test_instance_queries_become_one_region_each():
    shape = (40, 40)
    boxes = {  # rows top-bottom, columns left-right, inclusive
        "dog": (4, 17, 4, 17),
        "person": (24, 35, 4, 19),
        "second dog": (6, 21, 6, 17),  # three quarters under the first dog: a repeat
        "child": (20, 27, 12, 31),  # overlaps the person a little: kept, minus the overlap
        "nothing": (0, 39, 0, 39),
    }
    queries = [
        ("dog", [0.05, 0.9, 0.05]),  # classes: 0 person, 1 dog, then no object
        ("person", [0.8, 0.1, 0.1]),
        ("second dog", [0.1, 0.6, 0.3]),
        ("child", [0.7, 0.1, 0.2]),
        ("nothing", [0.1, 0.1, 0.8]),
    ]
    class_logits = np.stack([_query(p) for _, p in queries])
    mask_logits = np.stack([np.where(_box(shape, *boxes[n]), 20.0, -20.0) for n, _ in queries])
    labels = {0: "person", 1: "dog"}
    full = {name: _box(shape, *box) for name, box in boxes.items()}

    regions = instance_regions(
        class_logits, mask_logits, labels, shape, class_ids=frozenset({0, 1}), min_score=0.5
    )

    assert [(r.label, round(r.score, 6)) for r in regions] == [
        ("dog", 0.9),
        ("person", 0.8),
        ("person", 0.7),
    ]
    np.testing.assert_array_equal(regions[0].mask, np.where(full["dog"], 255, 0))
    np.testing.assert_array_equal(regions[1].mask, np.where(full["person"], 255, 0))
    child = full["child"] & ~full["person"]  # shared pixels go to the surer query
    np.testing.assert_array_equal(regions[2].mask, np.where(child, 255, 0))

    sure = instance_regions(
        class_logits, mask_logits, labels, shape, class_ids=frozenset({0, 1}), min_score=0.75
    )
    assert [r.label for r in sure] == ["dog", "person"]
    people = instance_regions(
        class_logits, mask_logits, labels, shape, class_ids=frozenset({0}), min_score=0.5
    )
    assert [round(r.score, 6) for r in people] == [0.8, 0.7]
    # Without the repeat rule, the second dog keeps the rows the first lacks.
    loose = instance_regions(
        class_logits, mask_logits, labels, shape, class_ids=frozenset({1}), min_overlap=0.0
    )
    assert [r.label for r in loose] == ["dog", "dog"]
    np.testing.assert_array_equal(
        loose[1].mask, np.where(full["second dog"] & ~full["dog"], 255, 0)
    )


def test_instance_masks_at_low_resolution_are_resized_to_the_image():
    half = np.full((1, 20, 25), -20.0, np.float32)
    half[0, 2:9, 3:11] = 20.0  # rows 2-8, columns 3-10 at half resolution
    (region,) = instance_regions(
        _query([[0.9, 0.1]]), half, {0: "dog"}, (40, 50), class_ids=frozenset({0})
    )
    # Bilinear with aligned pixel centres: half-resolution pixels a..b cover 2a..2b + 1.
    np.testing.assert_array_equal(region.mask, np.where(_box((40, 50), 4, 17, 6, 21), 255, 0))


# --- tiny real architectures, saved with save_pretrained ----------------------------------


def _label_kwargs():
    return dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


def _swin():
    return transformers.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _resnet():
    return transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _segformer():
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        **_label_kwargs(),
    )
    model = transformers.SegformerForSemanticSegmentation(config)
    processor = transformers.SegformerImageProcessor(size={"height": 32, "width": 32})
    return model, processor, model.decode_head.classifier


def _mobilenet_v2():  # DeepLabV3 on MobileNetV2, as google/deeplabv3_mobilenet_v2_1.0_513
    config = transformers.MobileNetV2Config(depth_multiplier=0.25, image_size=32, **_label_kwargs())
    model = transformers.MobileNetV2ForSemanticSegmentation(config)
    processor = transformers.MobileNetV2ImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, processor, model.segmentation_head.classifier.convolution


def _mask2former():
    config = transformers.Mask2FormerConfig(
        backbone_config=_swin(),
        use_pretrained_backbone=False,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=5,
        **_label_kwargs(),
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config)
    processor = transformers.Mask2FormerImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}
    )
    embedder = model.model.transformer_module.decoder.mask_predictor.mask_embedder
    return model, processor, model.class_predictor, embedder.get_submodule("2.0")


def _maskformer():
    decoder = transformers.DetrConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
    )
    config = transformers.MaskFormerConfig(
        backbone_config=_resnet(),
        decoder_config=decoder,
        mask_feature_size=32,
        fpn_feature_size=32,
        num_queries=5,
        **_label_kwargs(),
    )
    model = transformers.MaskFormerForInstanceSegmentation(config)
    processor = transformers.MaskFormerImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}
    )
    return model, processor, model.class_predictor, model.mask_embedder.get_submodule("2.0")


def _detr_panoptic():  # as facebook/detr-resnet-50-panoptic, with transformers' own ResNet
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        backbone=None,
        backbone_config=_resnet(),
        use_pretrained_backbone=False,
        d_model=64,  # its mask head needs d_model + heads divisible by 8
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        architectures=["DetrForSegmentation"],
        **_label_kwargs(),
    )
    model = transformers.DetrForSegmentation(config)
    processor = transformers.DetrImageProcessor(
        format="coco_panoptic", size={"shortest_edge": 64, "longest_edge": 96}
    )
    return model, processor, model.detr.class_labels_classifier, model.mask_head.out_lay


BUILDERS = {
    "segformer": _segformer,
    "mobilenet_v2": _mobilenet_v2,
    "mask2former": _mask2former,
    "maskformer": _maskformer,
    "detr": _detr_panoptic,
}
SEMANTIC = ("segformer", "mobilenet_v2")
MASKS = ("mask2former", "maskformer", "detr")
FORCED_CLASS, FORCED_LOGIT = 2, 6.0  # "dog" wins everywhere (forced models)
FORCED_SCORE = math.exp(FORCED_LOGIT) / (math.exp(FORCED_LOGIT) + 2.0)  # softmax over 3


def _force(name, parts):
    """Sets weights so that the model's answer is known: class ``FORCED_CLASS`` everywhere
    (semantic), or every query "dog" with a mask covering the whole image (mask models)."""
    with torch.no_grad():
        classifier = parts[0]
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.bias[FORCED_CLASS] = FORCED_LOGIT
        if name in MASKS:
            # 3 classes + no object: the no-object logit 0 like the others, so "dog" scores
            # e^6 / (e^6 + 3) here; zero mask embeddings give mask logits 0 (probability 0.5).
            mask_layer = parts[1]
            mask_layer.weight.zero_()
            mask_layer.bias.fill_(2.0 if name == "detr" else 0.0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """{name: folder} for each architecture, random weights; "forced-NAME" with ``_force``."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, build in BUILDERS.items():
        for forced in (False, True):
            torch.manual_seed(0)
            model, processor, *parts = build()
            if forced:
                _force(name, parts)
            folder = root / (f"forced-{name}" if forced else name)
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            folders[folder.name] = folder
    return folders


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three noise photos in two shapes (grouped in batches by shape) and a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, shape in (("a", (60, 80)), ("b", (80, 60)), ("c", (60, 80))):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return folder


def _parse(argv):
    parser = argparse.ArgumentParser(prog="clipclop")
    cli_patches.add_patches_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _build(sources, out, *options):
    argv = ["patches", "build", *map(str, sources), "--out", str(out), *PLAIN, *options]
    return cli_patches.run_patches(_parse(argv))


def _records(out):
    records = read_library_records(out)
    with np.load(out) as data:
        return records, data["rgba"]


@pytest.mark.parametrize("name", [*SEMANTIC, *MASKS])
def test_forced_model_cuts_each_photo_whole_with_its_label_and_score(
    name, model_dirs, photos, tmp_path, capsys
):
    out = tmp_path / "lib.npz"
    options = ["--segmentation", f"model:{model_dirs[f'forced-{name}']}", "--batch-size", "2"]
    # Zero mask embeddings give probability exactly 0.5: a threshold under it covers all.
    assert _build([photos], out, *options, "--model-threshold", "0.4") == 0

    records, squares = _records(out)
    names = ["a.png", "b.png", "c.png"]
    assert list(records["names"]) == [f"{photos.name}/{n}" for n in names]
    assert list(records["sources"]) == list(records["names"])
    assert list(records["labels"]) == ["dog"] * 3
    classes = 3 if name in SEMANTIC else 4  # mask models: the no-object entry too
    expected_score = math.exp(FORCED_LOGIT) / (math.exp(FORCED_LOGIT) + classes - 1)
    np.testing.assert_allclose(records["scores"], expected_score, rtol=1e-5)
    for square, image_name in zip(squares, names, strict=True):
        rgb = np.asarray(Image.open(photos / image_name).convert("RGB"))
        whole = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        np.testing.assert_array_equal(square, square_patch(whole, SIDE)[0])
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "wrote 3 patches" in captured.out
    # The contact sheet captions each tile: a band under the tiles, with text in it.
    sheet = np.asarray(Image.open(out.with_suffix(".png")))
    band = contact_sheet.CAPTION_LINES * contact_sheet.LINE_HEIGHT + 2
    assert sheet.shape == (2 * (64 + band), 2 * 64, 3)
    first_caption = sheet[64 : 64 + band, :64]
    assert (first_caption < 100).any() and (first_caption == 255).mean() > 0.5


def _reference(folder):
    """A function giving what the post-processing makes of the model's own output on one
    image, computed here from transformers' classes (and, for semantic models, checking our
    label map against transformers' own ``post_process_semantic_segmentation``)."""
    config = transformers.AutoConfig.from_pretrained(folder)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    semantic = config.model_type == "segformer"
    auto = (
        transformers.AutoModelForSemanticSegmentation
        if semantic
        else transformers.AutoModelForUniversalSegmentation
    )
    model = auto.from_pretrained(folder).eval()
    every = resolve_classes(LABELS, None)

    def regions(image, **options):
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        if semantic:
            theirs = processor.post_process_semantic_segmentation(
                outputs, target_sizes=[image.shape[:2]]
            )[0].numpy()
            label_map, confidence = segment_models.upsampled_labels(
                outputs.logits[0], image.shape[:2]
            )
            np.testing.assert_array_equal(label_map, theirs)
            return semantic_regions(label_map, confidence, LABELS, class_ids=every, **options)
        return instance_regions(
            outputs.class_queries_logits[0].numpy(),
            outputs.masks_queries_logits[0].numpy(),
            LABELS,
            image.shape[:2],
            class_ids=every,
            **options,
        )

    return regions


@pytest.mark.parametrize("name", ["segformer", "mask2former"])
def test_random_model_cut_outs_are_its_post_processed_output(name, model_dirs, photos, tmp_path):
    out = tmp_path / "lib.npz"
    folder = model_dirs[name]
    options = ["--segmentation", f"model:{folder}", "--min-score", "0.2", "--batch-size", "1"]
    assert _build([photos], out, *options) == 0

    records, squares = _records(out)
    expected = []
    reference = _reference(folder)
    for image_name in ("a.png", "b.png", "c.png"):
        rgb = np.asarray(Image.open(photos / image_name).convert("RGB"))
        regions = reference(rgb, min_score=0.2)
        for index, region in enumerate(regions):
            suffix = "" if len(regions) == 1 else f"#{index}"
            visible = region.mask > 0
            rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
            crop = np.dstack([rgb, region.mask])[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            name_ = f"{photos.name}/{image_name}{suffix}"
            expected.append((name_, region.label, region.score, square_patch(crop, SIDE)[0]))
    assert len(expected) >= 3  # random weights still give something to compare
    assert list(records["names"]) == [e[0] for e in expected]
    assert list(records["labels"]) == [e[1] for e in expected]
    np.testing.assert_allclose(records["scores"], [e[2] for e in expected], rtol=1e-5)
    for square, (*_, reference) in zip(squares, expected, strict=True):
        np.testing.assert_array_equal(square, reference)


def test_class_filter_and_min_score_decide_what_is_kept(model_dirs, photos, tmp_path):
    forced = f"model:{model_dirs['forced-segformer']}"
    out = tmp_path / "lib.npz"
    small = dict(side=SIDE, min_width=1, min_height=1, min_coverage=0.0, dedupe_threshold=0.0)
    with pytest.raises(patch_maker.BuildError) as error:
        patch_maker.build_library(
            photos, out, segmentation=forced, segmentation_options={"classes": ["person"]}, **small
        )
    assert "no person scoring 0.5 or more" in str(error.value) and not out.exists()
    with pytest.raises(patch_maker.BuildError, match="no object scoring 0.999"):
        patch_maker.build_library(
            photos, out, segmentation=forced, segmentation_options={"min_score": 0.999}, **small
        )
    calls = []
    report = patch_maker.build_library(
        photos,
        out,
        segmentation=forced,
        segmentation_options={"classes": ["Dog", "person"], "min_score": FORCED_SCORE - 1e-3},
        progress_fn=lambda *a: calls.append(a),
        **small,
    )
    assert report.count == 3 and calls == [(i, 4) for i in range(1, 5)]
    # An unknown class fails before any image is read, listing the model's labels.
    with pytest.raises(ValueError) as error:
        _build([photos], out, "--segmentation", forced, "--classes", "cat")
    assert str(error.value) == (
        "the model has no class 'cat': its labels are background, person, dog."
    )


def test_a_model_cut_out_keeps_the_transparency_of_the_file(model_dirs, tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (40, 60, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[5:30, 10:50, 3] = 255  # only this box is visible in the file
    patch_maker.build_library(
        [("cut.png", rgba)],
        tmp_path / "t.npz",
        segmentation=f"model:{model_dirs['forced-segformer']}",
        side=SIDE,
        feather=0.0,
    )
    with np.load(tmp_path / "t.npz") as data:
        np.testing.assert_array_equal(data["rgba"][0], square_patch(rgba[5:30, 10:50], SIDE)[0])


@pytest.mark.parametrize(
    "count, expected", [(10, [(4, 4), (4, 8), (2, 10)]), (8, [(4, 4), (4, 8)])]
)
def test_images_stream_through_in_batches(count, expected, model_dirs, tmp_path):
    segmenter = segment_models.load_hub_segmenter(model_dirs["forced-segformer"], batch_size=4)
    batches, pulled = [], []
    original = segmenter.segment_batch

    def spy(images):
        batches.append((len(images), len(pulled)))
        return original(images)

    segmenter.segment_batch = spy

    def images():
        rng = np.random.default_rng(1)
        for i in range(count):
            pulled.append(i)
            yield f"img{i}", rng.integers(0, 256, (24, 24, 3), np.uint8)

    report = patch_maker.build_library(
        images(), tmp_path / "s.npz", segmentation=segmenter, side=SIDE, dedupe_threshold=0.0
    )
    assert report.count == count
    # Each batch is segmented as soon as it is full: never more than 4 images held.
    assert batches == expected


def test_old_libraries_still_load_and_recuration_keeps_labels(model_dirs, photos, tmp_path):
    labelled = tmp_path / "labelled.npz"
    forced = f"model:{model_dirs['forced-segformer']}"
    assert _build([photos], labelled, "--segmentation", forced) == 0
    again = tmp_path / "again.npz"
    assert _build([labelled], again, "--segmentation", "alpha", "--no-preview") == 0
    records = read_library_records(again)
    assert list(records["labels"]) == ["dog"] * 3
    np.testing.assert_allclose(records["scores"], FORCED_SCORE, rtol=1e-5)
    # A library written without the records (older builds, save_library) reads with
    # defaults, and its contact sheet has no caption band.
    old = tmp_path / "old.npz"
    save_library(old, load_library(labelled, lowres_size=8, highres_size=SIDE))
    with np.load(old) as data:
        assert "labels" not in data
    records = read_library_records(old)
    assert list(records["labels"]) == [""] * 3 and np.isnan(records["scores"]).all()
    contact_sheet.library_contact_sheet(old, tmp_path / "old.png")
    assert np.asarray(Image.open(tmp_path / "old.png")).shape == (128, 128, 3)


def test_missing_pytorch_is_one_line_naming_the_extra(model_dirs, photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ValueError) as error:
        _build([photos], tmp_path / "x.npz", "--segmentation", f"model:{model_dirs['segformer']}")
    assert str(error.value) == (
        "segmentation models need PyTorch: pip install 'clipclop-jax[segment]'."
    )
    assert not (tmp_path / "x.npz").exists()


def test_models_that_cannot_be_used_are_one_line_errors(model_dirs, tmp_path):
    load = segment_models.load_hub_segmenter
    with pytest.raises(ValueError, match="hf download nvidia/segformer") as error:
        load("clipclop-tests/no-such-segmentation-model")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="folder .* does not exist"):
        load(tmp_path / "missing")
    not_segmentation = tmp_path / "resnet"
    transformers.ResNetForImageClassification(_resnet()).save_pretrained(not_segmentation)
    with pytest.raises(ValueError, match="'resnet' model, not a segmentation model .*segformer"):
        load(not_segmentation)
    detector = tmp_path / "detector"
    config = transformers.DetrConfig.from_pretrained(model_dirs["detr"])
    config.architectures = ["DetrForObjectDetection"]
    config.save_pretrained(detector)
    with pytest.raises(ValueError, match="without a mask head.*detr-resnet-50-panoptic"):
        load(detector)
    for option in ("--classes", "--min-score", "--batch-size"):
        with pytest.raises(ValueError, match=f"{option} needs a segmentation model"):
            cli_patches.build_options(
                _parse(["patches", "build", "x", "--out", "x.npz", option, "1"])
            )
