"""Chats: multi-turn sessions over one model, their history, saving and the async bridge."""
