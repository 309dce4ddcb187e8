"""``register``/``unregister``: each format from a path and from a URL on a 127.0.0.1 server, then stylize.

The models are tiny (a few 4-channel convolutions), so registration and a three-iteration stylization of
a 32-pixel image take about a second each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torchvision.models.vgg import make_layers

import modelzoo
from converters.graph import load_converted
from converters.torch7.writer import module, sequential, write_t7
from modelzoo.cli.main import main
from modelzoo.registration import ContractOptions, RegisterError, register, unregister
from registry import Registry

sys.path.insert(0, str(Path(__file__).parent))


VGG19_TINY = [4, 4, "M", 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"]


def write_torch7(path: Path) -> Path:
    rng = np.random.default_rng(0)
    layers = []
    channels = 3
    for width in (4, 8, 8):
        layers.append(module("nn.SpatialConvolution", nInputPlane=channels, nOutputPlane=width, kH=3, kW=3, dH=1, dW=1,
                             padH=1, padW=1, weight=rng.standard_normal((width, channels, 3, 3)).astype(np.float32) * 0.2,
                             bias=np.zeros(width, np.float32)))
        layers.append(module("nn.ReLU", threshold=0, val=0))
        layers.append(module("nn.SpatialMaxPooling", kH=2, kW=2, dH=2, dW=2, padH=0, padW=0, ceil_mode=True))
        channels = width
    return write_t7(path, sequential("nn.Sequential", layers))


def write_onnx(path: Path) -> Path:
    rng = np.random.default_rng(1)
    nodes, initializers, previous = [], [], "image"
    channels = 3
    for index, width in enumerate((4, 8), start=1):
        weight = numpy_helper.from_array(rng.standard_normal((width, channels, 3, 3)).astype(np.float32) * 0.2, f"w{index}")
        initializers.append(weight)
        nodes.append(helper.make_node("Conv", [previous, f"w{index}"], [f"c{index}"], pads=[1, 1, 1, 1], name=f"conv{index}"))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}"))
        previous, channels = f"r{index}", width
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def vgg_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"features.{key}": value for key, value in make_layers(VGG19_TINY).state_dict().items()}


def write_pytorch(path: Path) -> Path:
    torch.save(vgg_state(), path)
    return path


def write_safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(vgg_state(), str(path))
    return path


VGG16_BLOCKS = (2, 2, 3, 3, 3)


def write_caffe_vgg16(folder: Path) -> tuple[Path, Path]:
    """A VGG-16 with the real layer names and 4 channels everywhere, as a prototxt and a caffemodel."""
    from converters.caffe.writer import write_caffemodel

    rng = np.random.default_rng(3)
    lines = ['name: "tiny_vgg16"', 'input: "data"', "input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }"]
    blobs: dict[str, list[np.ndarray]] = {}
    bottom, channels = "data", 3
    for block, count in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, count + 1):
            conv, relu = f"conv{block}_{index}", f"relu{block}_{index}"
            lines.append(f'layer {{ name: "{conv}" type: "Convolution" bottom: "{bottom}" top: "{conv}" '
                         "convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }")
            lines.append(f'layer {{ name: "{relu}" type: "ReLU" bottom: "{conv}" top: "{conv}" }}')
            blobs[conv] = [rng.standard_normal((4, channels, 3, 3)).astype(np.float32) * 0.3, np.zeros(4, np.float32)]
            bottom, channels = conv, 4
        lines.append(f'layer {{ name: "pool{block}" type: "Pooling" bottom: "{bottom}" top: "pool{block}" '
                     "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }")
        bottom = f"pool{block}"
    prototxt = "\n".join(lines) + "\n"
    prototxt_path = folder / "deploy.prototxt"
    prototxt_path.write_text(prototxt)
    return write_caffemodel(folder / "VGG16_SOD_finetune_rough_faces.caffemodel", prototxt, blobs), prototxt_path


WRITERS = {"torch7": ("net.t7", write_torch7), "onnx": ("net.onnx", write_onnx),
           "pytorch": ("net.pth", write_pytorch), "safetensors": ("net.safetensors", write_safetensors)}


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    content = tmp_path / "content.png"
    style = tmp_path / "style.png"
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(content)
    Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))).save(style)
    return content, style


def stylize_briefly(name: str, images: tuple[Path, Path]):
    content, style = images
    return modelzoo.stylize(content, style, model=name, iterations=3, image_size=32, seed=0)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_register_from_path_then_stylize(fmt: str, nstzoo_home: Path, tmp_path: Path, images) -> None:
    file_name, writer = WRITERS[fmt]
    source = writer(tmp_path / file_name)
    result = register(str(source), name=f"my-{fmt}")
    assert result.format == fmt
    assert result.card_path == nstzoo_home / "registry" / f"my-{fmt}.toml"
    spec, _ = load_converted(result.converted)
    assert result.layers == spec.node_names
    card = Registry.load(nstzoo_home / "registry").get(f"my-{fmt}")
    assert not card.builtin
    assert set(card.defaults.style_layers) <= set(spec.node_names)
    output = stylize_briefly(f"my-{fmt}", images)
    assert output.image.shape[-2:] == (24, 32)
    assert torch.isfinite(output.image).all()


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_register_from_loopback_url(fmt: str, nstzoo_home: Path, http_server, tmp_path: Path, images) -> None:
    file_name, writer = WRITERS[fmt]
    body = writer(tmp_path / file_name).read_bytes()
    route = http_server.add(f"models/{file_name}", body)
    result = register(http_server.url(f"models/{file_name}"), name=f"url-{fmt}")
    assert route.requests == 1
    assert result.card.files[0].sources[0].text == http_server.url(f"models/{file_name}")
    assert (nstzoo_home / "models" / f"url-{fmt}" / "files" / file_name).read_bytes() == body
    assert stylize_briefly(f"url-{fmt}", images).image.shape[-2:] == (24, 32)


def test_register_from_hf_file(nstzoo_home: Path, http_server, tmp_path: Path, monkeypatch) -> None:
    """hf://OWNER/REPO/PATH without a revision resolves main, under HF_ENDPOINT (here the loopback server)."""
    body = write_onnx(tmp_path / "net.onnx").read_bytes()
    route = http_server.add("someone/tiny-net/resolve/main/onnx/net.onnx", body)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = register("hf://someone/tiny-net/onnx/net.onnx", name="from-hf")
    assert route.requests == 1
    assert result.card.files[0].sources[0].text == "hf://someone/tiny-net/onnx/net.onnx@main"
    assert result.format == "onnx"


def test_like_binds_builtin_layers(nstzoo_home: Path, tmp_path: Path, images) -> None:
    """A user's copy bound to the built-in vgg19 card: same name, its layers, defaults and contract."""
    builtin = Registry.load(None).get("vgg19")
    result = register(str(write_pytorch(tmp_path / "my_copy.pth")), like="vgg19")
    assert result.card.name == "vgg19"
    assert result.card.layers == builtin.layers
    assert result.card.defaults.style_layers == builtin.defaults.style_layers
    assert result.card.input == builtin.input
    assert Registry.load(nstzoo_home / "registry").get("vgg19").format == "pytorch"
    assert stylize_briefly("vgg19", images).image.shape[-2:] == (24, 32)


def test_like_rejects_file_without_its_layers(nstzoo_home: Path, tmp_path: Path) -> None:
    with pytest.raises(RegisterError, match="does not have the layers of card 'vgg19'"):
        register(str(write_torch7(tmp_path / "net.t7")), like="vgg19")
    assert not (nstzoo_home / "registry" / "vgg19.toml").exists()
    assert not (nstzoo_home / "models" / "vgg19").exists()


def test_failed_register_writes_nothing(nstzoo_home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.t7"
    broken.write_bytes(write_torch7(tmp_path / "net.t7").read_bytes()[:-100])
    with pytest.raises(Exception, match="not a readable Torch7 binary file"):
        register(str(broken), name="broken")
    assert not (nstzoo_home / "registry" / "broken.toml").exists()
    models = nstzoo_home / "models"
    assert not models.exists() or not any(models.iterdir())


def test_contract_options_and_chosen_layers(nstzoo_home: Path, tmp_path: Path) -> None:
    contract = ContractOptions(mean=(0.5, 0.4, 0.3), channel_order="RGB", value_range=1.0)
    result = register(str(write_onnx(tmp_path / "net.onnx")), name="custom", contract=contract,
                      content_layers=["relu2"], style_layers=["relu1", "relu2"])
    assert result.card.input.mean == (0.5, 0.4, 0.3)
    assert result.card.input.channel_order == "RGB"
    assert result.card.defaults.content_layers == ("relu2",)
    with pytest.raises(RegisterError, match="valid layers: conv1, relu1, conv2, relu2"):
        register(str(tmp_path / "net.onnx"), name="other", style_layers=["relu9"])


def test_unregister_removes_card_and_cache(nstzoo_home: Path, tmp_path: Path) -> None:
    register(str(write_torch7(tmp_path / "net.t7")), name="temporary")
    removed = unregister("temporary")
    assert nstzoo_home / "registry" / "temporary.toml" in removed
    assert not (nstzoo_home / "models" / "temporary").exists()
    with pytest.raises(RegisterError, match="built-in cards cannot be unregistered"):
        unregister("vgg19")


def test_second_register_needs_force(nstzoo_home: Path, tmp_path: Path) -> None:
    source = str(write_torch7(tmp_path / "net.t7"))
    register(source, name="twice")
    with pytest.raises(RegisterError, match="already exists"):
        register(source, name="twice")
    assert register(source, name="twice", force=True).card.name == "twice"


def test_cli_register_lists_layers_and_stylizes(nstzoo_home: Path, tmp_path: Path, images, capsys) -> None:
    source = write_torch7(tmp_path / "renamed.onnx")  # a .t7 file with a misleading extension
    main(["register", str(source), "--name", "cli-net", "--rgb", "--scale", "1", "--mean", "0,0,0"])
    printed = capsys.readouterr().out
    assert "registered cli-net (torch7" in printed
    assert "layers (9): 1, 2, 3, 4, 5, 6, 7, 8, 9" in printed
    content, style = images
    output = tmp_path / "out.png"
    main(["stylize", str(content), str(style), "-o", str(output), "--model", "cli-net", "--iterations", "2",
          "--image-size", "32"])
    assert Image.open(output).size == (32, 24)
    main(["unregister", "cli-net"])
    assert not (nstzoo_home / "registry" / "cli-net.toml").exists()


def test_package_functions(nstzoo_home: Path, tmp_path: Path) -> None:
    """modelzoo.register and modelzoo.unregister work from the package namespace."""
    import modelzoo.registration  # noqa: F401  (importing the module must not shadow the function)

    result = modelzoo.register(str(write_torch7(tmp_path / "net.t7")), name="api")
    assert result.card.name == "api"
    assert modelzoo.unregister("api")[0] == nstzoo_home / "registry" / "api.toml"


def test_rough_faces_from_users_copy(nstzoo_home: Path, tmp_path: Path, images) -> None:
    """The install path for a model without a public download: a Caffe copy bound to the built-in card."""
    caffemodel, prototxt = write_caffe_vgg16(tmp_path)
    result = register(str(caffemodel), prototxt=str(prototxt), like="rough_faces")
    assert result.format == "caffe"
    assert result.card.name == "rough_faces"
    assert result.card.defaults.content_layers == ("relu4_2",)
    assert [spec.role for spec in result.card.files] == ["weights", "prototxt"]
    assert stylize_briefly("rough_faces", images).image.shape[-2:] == (24, 32)


def test_caffe_from_loopback_urls(nstzoo_home: Path, http_server, tmp_path: Path, images) -> None:
    caffemodel, prototxt = write_caffe_vgg16(tmp_path)
    http_server.add("vgg/net.caffemodel", caffemodel.read_bytes())
    http_server.add("vgg/deploy.prototxt", prototxt.read_bytes(), content_type="text/plain")
    result = register(http_server.url("vgg/net.caffemodel"), prototxt=http_server.url("vgg/deploy.prototxt"),
                      name="url-caffe")
    assert result.format == "caffe"
    assert result.card.defaults.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert stylize_briefly("url-caffe", images).image.shape[-2:] == (24, 32)


def test_caffe_without_prototxt_asks_for_it(nstzoo_home: Path, tmp_path: Path) -> None:
    caffemodel, _ = write_caffe_vgg16(tmp_path)
    with pytest.raises(RegisterError, match="Caffe model") as caught:
        register(str(caffemodel), name="no-prototxt")
    assert "--prototxt" in caught.value.hint
