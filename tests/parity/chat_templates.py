"""Render chat templates with transformers' apply_chat_template -> tests/parity/chat/expected.json.

kiln renders the same templates with minijinja (runtime/open/src/chat.rs); tests/chat.rs compares.
The templates: the one SmolLM2-135M-Instruct's GGUF carries (read from the file), and Llama-2,
Llama-3 and Mistral-style templates as those models' tokenizer_config.json ship them.

    /work/venv-chat/bin/python tests/parity/chat_templates.py "$SMOLLM2_GGUF"

needs transformers, tokenizers, jinja2 and gguf (no torch): see tests/parity/README.md.
"""
import json
import sys
from pathlib import Path

import gguf
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

OUT = Path(__file__).parent / "chat" / "expected.json"

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral-style, multi-line with whitespace control, `namespace`, `tojson` and lstrip/trim blocks.
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- set ns.turns = ns.turns + 1 %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
{# a comment, and a block that trim_blocks must tidy #}
{% if add_generation_prompt %}
{{ '' }}
{% endif %}
<!-- turns: {{ ns.turns }} roles: {{ messages | map(attribute='role') | list | tojson }} -->
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Hi there!  "}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, with \"quotes\" and é ü 日本."},
    ],
    [{"role": "assistant", "content": "I speak first."}],
]


def main():
    gguf_path = sys.argv[1]
    reader = gguf.GGUFReader(gguf_path)
    field = reader.fields["tokenizer.chat_template"]
    smol = bytes(field.parts[field.data[0]]).decode("utf-8")
    templates = {"smollm2": smol, "llama2": LLAMA2, "llama3": LLAMA3, "mistral": MISTRAL}
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    cases = []
    for name, template in templates.items():
        for conv in CONVERSATIONS:
            for gen in (True, False):
                case = {"template": name, "messages": conv, "add_generation_prompt": gen}
                try:
                    case["rendered"] = tok.apply_chat_template(
                        conv, chat_template=template, tokenize=False, add_generation_prompt=gen
                    )
                except Exception as e:  # the template refused the conversation
                    case["error"] = str(e)
                cases.append(case)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generator": f"tests/parity/chat_templates.py, transformers {transformers.__version__}",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "templates": templates,
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(cases)} cases, {sum('error' in c for c in cases)} refused")


if __name__ == "__main__":
    main()
