"""python-for-android recipe: llama-cpp-python (llama.cpp + ggml) cross-compiled with the NDK.

UNVERIFIED: written for the documented Android path (see ../../README.md); no Android build was
run here. llama-cpp-python builds with scikit-build-core + CMake, so the recipe hands CMake the
NDK's toolchain file and the ggml options that suit a phone CPU (arm64, no OpenMP runtime to ship,
no native-CPU probing on the build host).
"""

from os.path import join

from pythonforandroid.recipe import PyProjectRecipe


class LlamaCppPythonRecipe(PyProjectRecipe):
    name = "llama_cpp_python"
    version = "0.3.36"
    url = "https://files.pythonhosted.org/packages/source/l/llama_cpp_python/llama_cpp_python-{version}.tar.gz"
    site_packages_name = "llama_cpp"
    depends = ["python3", "numpy"]  # noqa: RUF012 (python-for-android recipe convention)
    hostpython_prerequisites = ["scikit-build-core", "cmake", "ninja"]  # noqa: RUF012

    def get_recipe_env(self, arch, **kwargs):
        env = super().get_recipe_env(arch, **kwargs)
        toolchain = join(self.ctx.ndk_dir, "build", "cmake", "android.toolchain.cmake")
        cmake_args = [
            f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
            f"-DANDROID_ABI={arch.arch}",
            f"-DANDROID_PLATFORM=android-{self.ctx.ndk_api}",
            "-DGGML_NATIVE=OFF",  # do not tune for the build machine's CPU
            "-DGGML_OPENMP=OFF",  # ggml's own thread pool: no libomp.so to package
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            # LLAVA_BUILD (default ON) builds libmtmd, the image/audio projector library the SDK needs
        ]
        if arch.arch == "arm64-v8a":
            # dot-product and fp16 arithmetic: every arm64 phone CPU since ~2018 (Cortex-A55/A75 and later)
            cmake_args.append("-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16")
        env["SKBUILD_CMAKE_ARGS"] = ";".join(cmake_args)
        env["SKBUILD_STRICT_CONFIG"] = "false"
        return env


recipe = LlamaCppPythonRecipe()
