"""Print the APK's recipe chain as python-for-android resolves it (local overrides in
apps/kivy_demo/p4a_recipes first, then p4a's own recipes), and check that numpy links OpenBLAS.

    python scripts/p4a_recipe_chain.py     # in an environment with python-for-android installed
    bash scripts/p4a_recipe_chain.sh       # makes that environment (the version buildozer.spec pins)

Nothing is built: this proves which recipe classes, dependencies and meson options a build would use.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from pythonforandroid.recipe import Recipe

LOCAL = Path(__file__).resolve().parents[1] / "apps" / "kivy_demo" / "p4a_recipes"
UPSTREAM = Path(sys.modules["pythonforandroid"].__file__).parent / "recipes"
FOLLOW = {"llama_cpp_python", "numpy", "libopenblas"}


def main() -> int:
    ctx = types.SimpleNamespace(local_recipes=str(LOCAL))
    Recipe.recipe_dirs = classmethod(lambda cls, c: [str(LOCAL), str(UPSTREAM)])  # what p4a searches
    seen: dict[str, Recipe] = {}

    def show(name: str, depth: int) -> None:
        rec = Recipe.get_recipe(name, ctx)
        seen[name] = rec
        where = "p4a_recipes" if (LOCAL / name).is_dir() else "python-for-android"
        extra = getattr(rec, "extra_build_args", None) or []
        print(f"{'    ' * depth}{name} {rec.version} [{where}: {type(rec).__name__}"
              f" <- {type(rec).__mro__[1].__name__}] depends={list(rec.depends)}"
              + (f" {' '.join(extra)}" if extra else ""))
        for dep in rec.depends:
            if isinstance(dep, str) and dep in FOLLOW:
                show(dep, depth + 1)

    show("llama_cpp_python", 0)
    numpy = seen["numpy"]
    ok = "libopenblas" in numpy.depends and "-Csetup-args=-Dblas=openblas" in numpy.extra_build_args \
        and "-Csetup-args=-Dallow-noblas=false" in numpy.extra_build_args
    print("numpy links OpenBLAS:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
