"""Shell completion: ``virtmesh completion bash|zsh`` prints a script for the shell.

The script knows the commands and every command's flags (written out from the parser
when it is printed, so it matches this version), and asks ``virtmesh __names KIND``
for the names of guests (and pools, networks, contexts) as the user types: with the
connection flags already on the command line, a two-second deadline, and nothing on
stderr, so a gateway that is down or slow only means no names.

    eval "$(virtmesh completion bash)"       # in ~/.bashrc
    source <(virtmesh completion zsh)        # in ~/.zshrc, after compinit
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Iterator
from typing import Any

from virtmesh_client.cli_commands import CommandFactory
from virtmesh_client.cli_fleet import Local, connection
from virtmesh_client.cli_output import Output
from virtmesh_client.client import Client, ClientError, ConfigError
from virtmesh_client.config import ConfigFile

#: the metavar of a command's first argument → what ``__names`` lists for it
KINDS = {"DOMAIN": "domain", "POOL": "pool", "NETWORK": "network"}
#: kind → (service, List RPC, request type's module and name, repeated field)
_LISTS = {
    "domain": ("compute", "ListDomains", "virtmesh.compute.v1.compute_service_pb2",
               "ListDomainsRequest", "domains"),
    "pool": ("storage", "ListStoragePools", "virtmesh.storage.v1.storage_service_pb2",
             "ListStoragePoolsRequest", "storage_pools"),
    "network": ("network", "ListNetworks", "virtmesh.network.v1.network_service_pb2",
                "ListNetworksRequest", "networks"),
}
#: global flags that say where and how to connect: the script passes them on
CONNECTION_FLAGS = ("--gateway", "--context", "--node", "--socket", "--state-dir", "--ca",
                    "--cert", "--key", "--token-file", "--tls-server-name")
#: flags whose value is a file or directory
FILE_FLAGS = ("--ca", "--cert", "--key", "--token-file", "--state-dir", "--socket")


def names(kind: str, args: argparse.Namespace) -> list[str]:
    """The names of ``kind`` on every node the command line names (sorted, no repeats)."""
    if kind == "context":
        return sorted(ConfigFile.load().contexts)
    service, method, module, request, field = _LISTS[kind]
    args.service = service  # so that --socket DIR finds the right socket
    nodes, settings = connection(args)
    found: set[str] = set()
    with contextlib.ExitStack() as stack:
        for address in nodes.values():
            client = stack.enter_context(Client(address, timeout=args.timeout or 2.0,
                                                **settings))
            request_type = getattr(__import__(module, fromlist=[request]), request)
            found.update(item.name for item in client.all_pages(method, request_type(), field))
    return sorted(found)


def cmd_names(args: argparse.Namespace, out: Output) -> None:
    """Quietly nothing when the names cannot be had."""
    with contextlib.suppress(ClientError, ConfigError, OSError, ValueError):
        for name in names(args.kind, args):
            print(name)


# -- the scripts ----------------------------------------------------------------

def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """``(command, action or "", parser)`` of every listed command and config action."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        assert isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions:
            sub = action.choices[choice.dest]
            yield choice.dest, "", sub
            nested = sub._subparsers._group_actions if sub._subparsers else []
            for group in nested:
                assert isinstance(group, argparse._SubParsersAction)
                for inner in group._choices_actions:
                    yield choice.dest, inner.dest, group.choices[inner.dest]


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({option for action in parser._actions for option in action.option_strings
                   if option.startswith("--")})


def _kind(command: str, action: str, parser: argparse.ArgumentParser) -> str:
    if command == "config":
        return "context" if action in ("use-context", "set-context", "delete-context") else ""
    positional = [a for a in parser._actions if not a.option_strings
                  and not isinstance(a, argparse._SubParsersAction)]
    return KINDS.get(str(positional[0].metavar), "") if positional else ""


def _functions(parser: argparse.ArgumentParser) -> str:
    """``_virtmesh_flags CMD [ACTION]`` and ``_virtmesh_kind CMD ACTION N`` (the kind of
    names the Nth argument takes), in shell both bash and zsh run."""
    listed = list(_commands(parser))
    flags = "\n".join(f"        {shlex.quote(f'{c} {a}'.strip())}) echo "
                      f"{shlex.quote(' '.join(_flags(p)))};;" for c, a, p in listed)
    kinds = "\n".join(f"        {shlex.quote(f'{c} {a}'.strip())}) echo {kind};;"
                      for c, a, p in listed if (kind := _kind(c, a, p)))
    groups = {c for c, a, _ in listed if a}
    actions = "\n".join(
        f"        {c}) echo {shlex.quote(' '.join(a for cc, a, _ in listed if cc == c and a))};;"
        for c in sorted(groups))
    return f"""_virtmesh_commands() {{
    echo {shlex.quote(' '.join(c for c, a, _ in listed if not a))}
}}
_virtmesh_globals() {{
    echo {shlex.quote(' '.join(_flags(parser)))}
}}
_virtmesh_actions() {{
    case "$1" in
{actions}
    esac
}}
_virtmesh_flags() {{
    case "$1${{2:+ $2}}" in
{flags}
    esac
}}
_virtmesh_kind() {{
    [ "$3" = 0 ] || return 0
    case "$1${{2:+ $2}}" in
{kinds}
    esac
}}
"""


#: bash and zsh both parse the command line the same way: command, config action,
#: how many arguments so far, and the connection flags to pass on
_SCAN = """\
    local i w cmd="" action="" positional=0
    local -a conn
    conn=()
    for ((i = 1; i < cword; i++)); do
        w="${line[$i]}"
        case "$w" in
            %(connection)s) conn+=("$w" "${line[$((i + 1))]}"); i=$((i + 1)); continue;;
            --timeout) i=$((i + 1)); continue;;
            -*) continue;;
        esac
        if [ -z "$cmd" ]; then cmd="$w"
        elif [ -n "$(_virtmesh_actions "$cmd")" ] && [ -z "$action" ]; then action="$w"
        else positional=$((positional + 1))
        fi
    done
"""

BASH = """\
# virtmesh completion for bash: eval "$(virtmesh completion bash)"
%(functions)s
_virtmesh() {
    local -a line
    line=("${COMP_WORDS[@]}")
    local cword=$COMP_CWORD cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
%(scan)s
    COMPREPLY=()
    case "$prev" in
        %(files)s) COMPREPLY=($(compgen -f -- "$cur")); return;;
        --context) COMPREPLY=($(compgen -W "$(virtmesh __names context 2>/dev/null)" -- "$cur"))
                   return;;
        --gateway|--node|--timeout|--tls-server-name) return;;
    esac
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "$(_virtmesh_commands) $(_virtmesh_globals)" -- "$cur"))
    elif [ -n "$(_virtmesh_actions "$cmd")" ] && [ -z "$action" ] && [[ $cur != -* ]]; then
        COMPREPLY=($(compgen -W "$(_virtmesh_actions "$cmd")" -- "$cur"))
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_virtmesh_flags "$cmd" "$action")" -- "$cur"))
    else
        local kind
        kind=$(_virtmesh_kind "$cmd" "$action" "$positional")
        if [ -n "$kind" ]; then
            COMPREPLY=($(compgen -W "$(virtmesh "${conn[@]}" --timeout 2 __names "$kind" \\
                                       2>/dev/null)" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
    fi
}
complete -F _virtmesh virtmesh
"""

ZSH = """\
#compdef virtmesh
# virtmesh completion for zsh: source <(virtmesh completion zsh), after compinit
%(functions)s
_virtmesh() {
    local -a line
    line=("${(@)words[2,-1]}")  # as in bash, line[1] is the first argument
    local cword=$((CURRENT - 1))
%(scan)s
    case "${words[CURRENT - 1]}" in
        %(files)s) _files; return;;
        --context) compadd -- ${(f)"$(virtmesh __names context 2>/dev/null)"}; return;;
        --gateway|--node|--timeout|--tls-server-name) return;;
    esac
    if [[ -z $cmd ]]; then
        if [[ $PREFIX == -* ]]; then compadd -- ${=$(_virtmesh_globals)}
        else compadd -- ${=$(_virtmesh_commands)}; fi
    elif [[ -n $(_virtmesh_actions $cmd) && -z $action && $PREFIX != -* ]]; then
        compadd -- ${=$(_virtmesh_actions $cmd)}
    elif [[ $PREFIX == -* ]]; then
        compadd -- ${=$(_virtmesh_flags $cmd $action)}
    else
        local kind=$(_virtmesh_kind $cmd "$action" $positional)
        if [[ -n $kind ]]; then
            compadd -- ${(f)"$(virtmesh $conn --timeout 2 __names $kind 2>/dev/null)"}
        else
            _files
        fi
    fi
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _virtmesh "$@"
else
    compdef _virtmesh virtmesh
fi
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    values = {"functions": _functions(parser), "connection": "|".join(CONNECTION_FLAGS),
              "files": "|".join(FILE_FLAGS)}
    values["scan"] = _SCAN % values
    return (BASH if shell == "bash" else ZSH) % values


def cmd_completion(args: argparse.Namespace, out: Output) -> None:
    from virtmesh_client.cli import build_parser  # the whole parser, which holds this module
    print(script(args.shell, build_parser()), end="")


def register(command: CommandFactory) -> None:
    sub = command("completion", Local(cmd_completion),
                  "print a bash or zsh completion script: eval \"$(virtmesh completion "
                  "bash)\", or source <(virtmesh completion zsh)")
    sub.add_argument("shell", choices=("bash", "zsh"))
    sub = command("__names", Local(cmd_names), "")  # hidden: what the scripts call
    sub.add_argument("kind", choices=(*_LISTS, "context"))
