# The only compiled part of emu: the native Unicorn block hook (emu/backends/unicorn/kick.c).
from setuptools import setup

setup(cffi_modules=["emu/backends/unicorn/kick_build.py:ffi"])
