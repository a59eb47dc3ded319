"""The package's shape (issue 28), read from the source with `ast`: Ray stays at the edges, the Ray
executors import the pipeline and never the reverse, no two modules import each other (directly
or around a loop), the top level holds only the entry points and packages, and importing what a
Ray worker imports leaves torchvision out (issue 35)."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raydistill"
RAY_FREE = ("pipeline", "distill", "models")


def _modules() -> dict:
    """{dotted module name: file} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set:
    """Every module `module` imports, at the top or inside a function (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)   # `from pkg import module`
    return found


def _graph() -> dict:
    modules = _modules()
    return {m: {i for i in _imports(m, p) if i in modules and i != m and not m.startswith(i + ".")}
            for m, p in modules.items()}


def test_ray_free_packages_do_not_import_ray():
    for module, path in _modules().items():
        if module.split(".")[1:2] and module.split(".")[1] in RAY_FREE:
            ray = sorted(i for i in _imports(module, path) if i == "ray" or i.startswith("ray."))
            assert not ray, f"{module} imports {ray}"


def test_the_pipeline_never_imports_the_ray_executors():
    for module, deps in _graph().items():
        if module.startswith("raydistill.pipeline"):
            assert not [d for d in deps if d.startswith(("raydistill.distributed", "raydistill.search"))], module


def test_no_import_circles():
    graph = _graph()
    circles = []

    def visit(module, path, on_path):
        for dep in sorted(graph[module]):
            if dep in on_path:
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep], on_path | {dep})
        done.add(module)

    done = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], {module})
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_top_level_holds_only_entry_points_and_packages():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert files == ["__init__.py", "cli.py"], files
    assert (PACKAGE / "config" / "__init__.py").is_file()
    assert (PACKAGE / "pipeline" / "__init__.py").is_file()


def test_worker_and_pipeline_imports_leave_torchvision_out():
    """torchvision's import (~1.5 s: torch._dynamo, via torchvision.ops) would be paid by every Ray
    worker start; the CIFAR nets need none of it, so it is imported only where a torchvision net is
    built or its weights read. Run in a fresh interpreter: this session's modules are no evidence."""
    code = ("import sys, raydistill, raydistill.models, raydistill.distributed.worker, raydistill.pipeline.local, "
            "raydistill.distill.engine, raydistill.cli; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
