"""python-for-android recipe override: numpy linked against OpenBLAS (the `libopenblas` recipe).

UNVERIFIED: no Android build was run here. The pinned python-for-android release (v2026.05.09, see
../../buildozer.spec) builds numpy with `-Dblas=none -Dlapack=none`, so every matmul on the phone
is a plain single-threaded loop (token2wav: minutes per second of speech). Upstream fixed that in
python-for-android PR 3305 ("numpy: enable openblas", merged 2026-05-29); until buildozer.spec pins
a release that contains it, this override does the same on top of the release's own recipe: depend
on libopenblas, let meson find it (its headers and library come from the libopenblas build dir),
and fail the build instead of falling back to no BLAS.
"""

from os.path import join

from pythonforandroid.recipe import Recipe
from pythonforandroid.recipes.numpy import NumpyRecipe as UpstreamNumpyRecipe


class NumpyOpenBlasRecipe(UpstreamNumpyRecipe):
    depends = ["libopenblas"]  # noqa: RUF012 (python-for-android recipe convention)
    extra_build_args = [  # noqa: RUF012
        "-Csetup-args=-Dblas=openblas",
        "-Csetup-args=-Dlapack=openblas",
        "-Csetup-args=-Dallow-noblas=false",  # no silent fallback to the slow loops
    ]

    def get_recipe_env(self, arch, **kwargs):
        env = super().get_recipe_env(arch, **kwargs)
        blas = join(Recipe.get_recipe("libopenblas", self.ctx).get_build_dir(arch.arch), "build")
        flags = f" -I{blas} -L{join(blas, 'lib')}"  # cblas.h / openblas_config.h, libopenblas.so
        for key in ("CFLAGS", "CXXFLAGS"):
            env[key] = env.get(key, "") + flags
        env["LDFLAGS"] = env.get("LDFLAGS", "") + f" -L{join(blas, 'lib')}"
        return env


recipe = NumpyOpenBlasRecipe()
