"""The public surface after the move to ops/, nets/ and check/: every name and module path
that existed before still imports, the old module paths are the new modules themselves, and
the checker never imports the package face."""

import ast
import importlib
import pathlib

import pytest

import fbp

FBP = pathlib.Path(fbp.__file__).parent

# Every public name of the face before the move (the count may only grow).
NAMES_BEFORE = """Backprop BatchNormParams BatchNormState Dense FitResult LayerNormParams NormDense
VJPCheckError VJPReport accumulate_grads backprop backprop_grad_fn batch_norm bce
bce_with_logits check_vjp data_parallel data_parallel_step default_mesh dense fit forward gelu
hessian hvp init_batch_norm init_dense init_layer_norm init_mlp layer_norm leaky_relu mlp
mlp_loss mse numerical_grad numerical_vjp rel_error relu residual shard_batch sigmoid softmax
softmax_cross_entropy tanh""".split()

# Old module path -> where its code lives now (None: it did not move).
MODULES = {
    "fbp.activations": "fbp.ops.activations",
    "fbp.linear": "fbp.ops.linear",
    "fbp.losses": "fbp.ops.losses",
    "fbp.norms": "fbp.ops.norms",
    "fbp.mlp": "fbp.nets.mlp",
    "fbp.autodiff": None,
    "fbp.check": None,
    "fbp.forward": None,
    "fbp.numerical": None,
    "fbp.second_order": None,
    "fbp.train": None,
    "fbp.parallel": None,
    "fbp.testing": None,
    "fbp.transposed": None,
}


@pytest.mark.parametrize("name", NAMES_BEFORE)
def test_every_public_name_still_imports(name):
    assert name in fbp.__all__
    assert getattr(fbp, name) is not None


def test_all_lists_only_names_that_exist():
    missing = [n for n in fbp.__all__ if not hasattr(fbp, n)]
    assert not missing


@pytest.mark.parametrize("old, new", MODULES.items())
def test_old_module_paths_import(old, new):
    module = importlib.import_module(old)
    if new is not None:
        assert module is importlib.import_module(new)
        # the alias file says where the code lives now
        alias = (FBP / (old.split(".")[1] + ".py")).read_text()
        assert new.replace(".", "/") + ".py" in alias
    if old not in ("fbp.mlp", "fbp.transposed"):   # these names are functions of the face
        assert getattr(fbp, old.split(".")[1]) is module


def test_importing_a_module_path_does_not_rebind_a_function_of_the_face():
    """``import fbp.mlp`` (the old module path) must leave ``fbp.mlp`` the function."""
    importlib.import_module("fbp.mlp")
    importlib.import_module("fbp.transposed")
    assert callable(fbp.mlp) and fbp.mlp.__module__ == "fbp.nets.mlp"
    assert callable(fbp.transposed) and not isinstance(fbp.transposed, type(fbp))


def test_from_old_path_import_private_helpers():
    from fbp.activations import DERIVATIVES, sigmoid_grad
    from fbp.losses import DELTAS
    from fbp.mlp import NormDense

    assert callable(sigmoid_grad) and DERIVATIVES and DELTAS and NormDense


def _imports(path: pathlib.Path) -> set:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def test_checker_lives_in_check_and_never_imports_the_face():
    for stale in ("_rules", "_report", "_diagnose", "_op_table", "_checks"):
        assert not (FBP / f"{stale}.py").exists()
    for path in (FBP / "check").glob("*.py"):
        assert "fbp" not in _imports(path), path.name


def test_imports_run_downwards():
    """ops import only _validate and other ops; nets import ops (and _validate); neither
    imports the tools or the checker."""
    for floor, allowed in (("ops", ("fbp._validate", "fbp.ops")),
                           ("nets", ("fbp._validate", "fbp.ops", "fbp.nets"))):
        for path in (FBP / floor).glob("*.py"):
            for name in _imports(path):
                if name == "fbp" or name.startswith("fbp."):
                    assert name.startswith(allowed), f"{floor}/{path.name} imports {name}"
