"""The zoo: materialisation by role, BatchNorm calibration, names, caching, example inputs."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from autofuse.datasets import zoo
from autofuse.errors import AutofuseError, ModelLoadError
from autofuse.frontend import import_model, read_model
from autofuse.frontend.materialize import materialize, model_bytes, weight_role
from autofuse.runners.onnxruntime import baseline_session, reference_session, run_session
from conftest import make_model


def light_weight(name: str, shape: list[int]) -> tuple[onnx.TensorProto, onnx.NodeProto]:
    """A `<name>__SHAPE` initializer and the ConstantOfShape(0.02) node that makes `name`."""
    shape_tensor = numpy_helper.from_array(np.array(shape, np.int64), f"{name}__SHAPE")
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.02])
    return shape_tensor, helper.make_node("ConstantOfShape", [f"{name}__SHAPE"], [name], value=value)


@pytest.fixture
def light_cnn() -> onnx.ModelProto:
    """Conv(64x32x3x3) -> BatchNorm -> Unsqueeze'd scale (Mul) -> flatten -> Gemm, opset 9 and IR 3,
    with every initializer (an unused one too) listed as a graph input, as in the onnx light zoo."""
    weights = {
        "w": [64, 32, 3, 3], "b": [64], "s": [64], "bias": [64], "mean": [64], "var": [64],
        "k": [64], "fc_w": [10, 64 * 8 * 8], "fc_b": [10],
    }
    made = {name: light_weight(name, shape) for name, shape in weights.items()}
    nodes = [node for _, node in made.values()] + [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["n"]),
        helper.make_node("Unsqueeze", ["k"], ["k3"], axes=[1, 2]),
        helper.make_node("Mul", ["n", "k3"], ["m"]),
        helper.make_node("Flatten", ["m"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    unused = numpy_helper.from_array(np.zeros((1, 1), np.float32), "unused")
    initializers = [tensor for tensor, _ in made.values()] + [unused]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers
    ]
    model = make_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                       initializers, opset=9)
    model.ir_version = 3
    return model


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_materialize_replaces_every_light_weight(light_cnn):
    real = materialize(light_cnn, seed=0)
    onnx.checker.check_model(real)
    assert not [n for n in real.graph.node if n.op_type == "ConstantOfShape"]
    names = set(arrays(real))
    assert not [n for n in names if n.endswith("__SHAPE")] and "unused" not in names
    assert {"w", "b", "s", "bias", "mean", "var", "k", "fc_w", "fc_b"} <= names
    assert [i.name for i in real.graph.input] == ["x"]
    assert real.ir_version >= 4
    assert arrays(real)["w"].shape == (64, 32, 3, 3) and arrays(real)["w"].dtype == np.float32


def test_materialize_scales_each_weight_by_role(light_cnn):
    values = arrays(materialize(light_cnn, seed=0))
    assert values["w"].std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.05)
    assert values["fc_w"].std() == pytest.approx(0.02, rel=0.05)
    assert np.all(values["var"] >= 0.5) and np.all(values["var"] <= 1.5)
    for scale in ("s", "k"):
        assert abs(values[scale].mean() - 1) < 0.05 and values[scale].std() < 0.2
    for small in ("b", "bias", "mean", "fc_b"):
        assert np.abs(values[small]).max() < 0.2


def test_roles_follow_pass_through_ops(light_cnn):
    assert weight_role(light_cnn.graph, "k") == "norm_scale"
    assert weight_role(light_cnn.graph, "var") == "bn_var"
    assert weight_role(light_cnn.graph, "w") == "conv_kernel"
    assert weight_role(light_cnn.graph, "fc_w") == "dense"


def test_materialize_is_seeded(light_cnn):
    first, again, other = (arrays(materialize(light_cnn, seed=s)) for s in (0, 0, 1))
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], other["w"])


def test_materialized_model_runs_in_onnxruntime(light_cnn):
    session = reference_session(model_bytes(materialize(light_cnn, seed=0)))
    level = session.get_session_options().graph_optimization_level
    assert level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    (y,) = run_session(session, {"x": np.ones((1, 32, 8, 8), np.float32)})
    assert y.shape == (1, 10) and np.all(np.isfinite(y))


def batchnorm_output_std(model: onnx.ModelProto) -> float:
    """Median per-channel std of the BatchNorm output on a fresh normal input."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, None))
    x = np.random.default_rng(5).standard_normal((1, 32, 8, 8)).astype(np.float32)
    _, normalised = run_session(reference_session(model_bytes(probe)), {"x": x})
    return float(np.median(normalised.std(axis=(0, 2, 3))))


def test_calibrated_batchnorm_normalises_its_input(light_cnn):
    drawn = materialize(light_cnn, seed=0)
    calibrated = zoo.calibrate_batchnorm(drawn, seed=0)
    assert np.all(arrays(calibrated)["var"] > 0)
    assert not 0.85 < batchnorm_output_std(drawn) < 1.15
    assert 0.85 < batchnorm_output_std(calibrated) < 1.15


def test_onnx_zoo_model_has_he_scaled_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path))
    real = onnx.load(zoo.zoo_path("zoo:squeezenet"))
    kernel = next(t for t in real.graph.initializer if t.name == "fire9/squeeze1x1_w_0")
    assert numpy_helper.to_array(kernel).std() == pytest.approx(np.sqrt(2 / 512), rel=0.05)


def test_list_models():
    names = zoo.list_models()
    assert len(names) == 12 and "zoo:resnet50" in names and "zoo:bert_base" in names
    assert all(n.startswith("zoo:") for n in names)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match="unknown zoo model 'zoo:resnet51'.*zoo:resnet50"):
        zoo.resolve_model("zoo:resnet51")


def test_plain_paths_pass_through(tmp_path):
    assert zoo.resolve_model(tmp_path / "m.onnx") == tmp_path / "m.onnx"


def test_missing_shared_models_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "shared_model_dirs", lambda: [tmp_path])
    with pytest.raises(ModelLoadError, match=f"light_gpt2.onnx not found; looked in {tmp_path}.*AUTOFUSE_MODELS_DIR"):
        zoo.light_path("zoo:gpt2")


def test_models_dir_env_var_comes_first(tmp_path, monkeypatch):
    (tmp_path / "light_mobilenet_v2.onnx").write_bytes(b"")
    monkeypatch.setenv("AUTOFUSE_MODELS_DIR", str(tmp_path))
    assert zoo.light_path("zoo:mobilenet_v2") == tmp_path / "light_mobilenet_v2.onnx"


def test_zoo_path_materialises_once_per_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path))
    first = zoo.zoo_path("zoo:squeezenet", seed=0)
    assert first.parent == tmp_path / "zoo"
    written = first.stat().st_mtime_ns
    assert zoo.resolve_model("zoo:squeezenet") == first
    assert first.stat().st_mtime_ns == written
    other = zoo.zoo_path("zoo:squeezenet", seed=1)
    assert other != first and other.read_bytes() != first.read_bytes()
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == sorted([first.name, other.name])


def test_example_inputs_for_images_are_seeded_normal():
    model = import_model(read_model(zoo.light_path("zoo:resnet50")))
    (name,) = model.graph.inputs
    x = zoo.example_inputs(model, seed=0)[name]
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert abs(x.std() - 1) < 0.01
    np.testing.assert_array_equal(x, zoo.example_inputs(model, seed=0)[name])
    assert not np.array_equal(x, zoo.example_inputs(model, seed=1)[name])


def embedding_model(vocabulary: int) -> onnx.ModelProto:
    """ids (1x128, int64) -> Gather from a vocabulary x 4 table."""
    table = numpy_helper.from_array(np.zeros((vocabulary, 4), np.float32), "table")
    return make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128, 4])],
        [table],
    )


def test_example_token_ids_are_small_valid_indices():
    ids = zoo.example_inputs(import_model(embedding_model(30522)), seed=0)["ids"]
    assert ids.shape == (1, 128) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < zoo.MAX_TOKEN_ID and len(np.unique(ids)) > 50


def test_token_ids_stay_below_a_small_vocabulary():
    ids = zoo.example_inputs(import_model(embedding_model(7)))["ids"]
    assert ids.max() < 7 and ids.min() >= 0


def test_baseline_session_uses_every_core(tiny_model_path):
    session = baseline_session(tiny_model_path)
    assert session.get_session_options().intra_op_num_threads == os.cpu_count()
    assert baseline_session(tiny_model_path, threads=1).get_session_options().intra_op_num_threads == 1
    (y,) = run_session(session, {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(y, [[0, 0, 1, 2]])
    with pytest.raises(AutofuseError, match=r"missing inputs \['x'\]"):
        run_session(session, {})


# synthetic models (cost-model training data)

def test_synthetic_models_are_drawn_once_per_seed_and_cut_into_tasks(tmp_path, monkeypatch):
    from autofuse.api import import_onnx, rewrite_model
    from autofuse.datasets import synthetic
    from autofuse.search.task import extract_tasks

    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path / "again"))
    again = zoo.resolve_model("synth:cnn-3").read_bytes()
    monkeypatch.setenv("AUTOFUSE_CACHE", str(tmp_path))
    path = zoo.resolve_model("synth:cnn-3")
    assert path.parent == tmp_path / "synthetic" and path.read_bytes() == again  # the seed decides everything
    assert zoo.resolve_model("synth:cnn-4").read_bytes() != again
    ops = {"cnn": ("ConvNHWC",), "mlp": ("MatMul", "Gemm")}
    for family, expected in ops.items():
        tasks = extract_tasks(rewrite_model(import_onnx(f"synth:{family}-1"), ("folding", "algebraic", "layout")).model)
        assert tasks and any(n["op"] in expected for t in tasks for n in t.describe()["nodes"])
    for bad in ("synth:rnn-1", "synth:cnn", "synth:cnn-x"):
        with pytest.raises(ModelLoadError, match="synth:<cnn|mlp>-<seed>"):
            synthetic.parse(bad)
