"""python-for-android recipe override: OpenBLAS 0.3.29 for one fixed CPU target, without Fortran.

UNVERIFIED: no Android build was run here. Same library and version as the release's `libopenblas`
recipe, configured as upstream's PR 3305 does: `DYNAMIC_ARCH=0` (one kernel set: ARMV8 on arm64-v8a,
which every arm64 phone runs; runtime CPU dispatch does not build with the NDK) and no Fortran
compiler (the NDK has none; LAPACK comes from OpenBLAS's C translation, `C_LAPACK=ON`).
"""

from multiprocessing import cpu_count
from os.path import join

import sh
from pythonforandroid.logger import shprint
from pythonforandroid.recipes.libopenblas import LibOpenBlasRecipe as UpstreamLibOpenBlasRecipe
from pythonforandroid.util import current_directory, ensure_dir, rmdir

TARGETS = {"arm64-v8a": "ARMV8", "armeabi-v7a": "ARMV7", "x86_64": "CORE2", "x86": "CORE2"}


class LibOpenBlasRecipe(UpstreamLibOpenBlasRecipe):
    version = "0.3.29"

    def build_arch(self, arch):
        source = self.get_build_dir(arch.arch)
        build = join(source, "build")  # built_libraries: build/lib/libopenblas.so
        ensure_dir(build)
        with current_directory(build):
            env = self.get_recipe_env(arch)
            rmdir("CMakeFiles")
            shprint(sh.rm, "-f", "CMakeCache.txt", _env=env)
            shprint(
                sh.cmake, source,
                "-DCMAKE_SYSTEM_NAME=Android",
                f"-DCMAKE_ANDROID_ARCH_ABI={arch.arch}",
                f"-DCMAKE_ANDROID_NDK={self.ctx.ndk_dir}",
                f"-DCMAKE_ANDROID_API={self.ctx.ndk_api}",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=ON",
                "-DCMAKE_Fortran_COMPILER=NOTFOUND",
                "-DNOFORTRAN=1",
                "-DC_LAPACK=ON",
                "-DDYNAMIC_ARCH=0",
                f"-DTARGET={TARGETS[arch.arch]}",
                _env=env,
            )
            shprint(sh.make, f"-j{cpu_count()}", _env=env)


recipe = LibOpenBlasRecipe()
