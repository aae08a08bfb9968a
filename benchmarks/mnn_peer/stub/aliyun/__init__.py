"""Offline stand-in for aliyun-log-python-sdk, installed only into the MNN benchmark venv.

MNN's converter (MNN/tools/utils/log.py) imports `aliyun.log` to upload usage records, and runs
`pip install aliyun-log-python-sdk` when the import fails. This stand-in satisfies the import and
drops every record, so neither the install nor the upload happens.
"""
