"""A small mixed-script corpus for tokenizer parity checks."""

CORPUS: list[str] = [
    "Hello, world! How's it going? I'm fine, you'll see; we'd, they've, she's.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "日本語のテキストも正しく分割されるべきです。カタカナ、ひらがな、漢字。",
    "你好，世界！这是一个测试句子，包含中文标点符号。",
    "Emoji: 😀👍🏽🎉 family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷 and ❤️.",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\nclass A:\n\tpass\n",
    "   leading spaces, trailing spaces   \n\n\n   \t\t mixed\r\nwindows line\r\n",
    "Ünïcödé àccents, Ελληνικά, русский текст, العربية, עברית, हिन्दी, 한국어 문장.",
    "URLs https://example.com/a?b=c&d=e#f and e-mails a.b@c.de, $100.00, 3.14159, 1e-9.",
    "<|im_start|>user\nplain text with <tags> and </tags><|im_end|>",
    "           ",
    "a\n\nb\n \nc  \n  d",
]
