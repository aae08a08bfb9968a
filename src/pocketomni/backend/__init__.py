"""Internal backend: the only part of PocketOmni that calls llama-cpp-python's ctypes API.

    LlamaModel      a GGUF text model (thinker or talker): vocabulary, metadata, embedding rows
    LlamaContext    KV cache + decoding of tokens or embeddings with explicit (M-RoPE) positions
    MtmdContext     the mmproj through libmtmd, used as an image / audio encoder
    sample          numpy sampling with Hugging Face semantics

Nothing here hands llama_cpp objects to callers; every object has close() and is a context manager.
"""

from pocketomni.backend.batch import DecodeInterrupted, DecodeResult
from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel, TokenTextStream, default_threads
from pocketomni.backend.mtmd import MediaEmbedding, MtmdContext
from pocketomni.backend.sampling import SamplingParams, apply_repetition_penalty, sample

__all__ = [
    "DecodeInterrupted", "DecodeResult", "LlamaContext", "LlamaModel",
    "MediaEmbedding", "MtmdContext", "SamplingParams", "TokenTextStream",
    "apply_repetition_penalty", "default_threads", "sample",
]
