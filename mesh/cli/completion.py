"""``mesh completion bash``: a shell completion script made from the command's own parser, so
it always knows every command and option (no extra dependency)."""

from __future__ import annotations

import argparse

BASH = """# bash completion for mesh (agent-mesh). Load with:  source <(mesh completion bash)
_mesh_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" word
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) command="$word"; break ;; esac
    done
    case "$command" in
{cases}
        *) COMPREPLY=($(compgen -W "{commands} {globals}" -- "$cur")) ;;
    esac
}}
complete -o default -F _mesh_complete mesh
"""

ZSH = """# zsh completion for mesh (agent-mesh). Load with:  source <(mesh completion zsh)
autoload -U +X bashcompinit && bashcompinit
"""


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    )


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _commands(parser)
    cases = "\n".join(
        f'        {name}) COMPREPLY=($(compgen -W "{" ".join(_options(sub))}" -- "$cur")) ;;'
        for name, sub in sorted(commands.items())
    )
    bash = BASH.format(
        cases=cases, commands=" ".join(sorted(commands)), globals=" ".join(_options(parser))
    )
    return bash if shell == "bash" else ZSH + bash
