#!/usr/bin/env python3
"""Example client for magma-serve (Debian: python3-grpcio, python3-protobuf).

Stubs are generated at run time from proto/magma/v1/agent.proto with protoc
and grpc_python_plugin, so nothing generated is kept in the tree.

  scripts/client.py info
  scripts/client.py generate --image shot.png "What is on the screen?"
  scripts/client.py chat                     # streaming chat on the terminal
  scripts/client.py click --image shot.png "open the settings" [--som-out som.png] [--boxes boxes.json]
  scripts/client.py act --image cam.png "pick up the red block" [--unnorm-key KEY]
  scripts/client.py trace --image cam.png "put the cup on the plate" [--format path] [--overlay-out o.png]
  scripts/client.py ui-loop --image shot.png "open the settings" "then click OK"
  scripts/client.py robot-loop --image cam.png "pick up the block" --steps 5

Options common to all: --server host:port (default 127.0.0.1:50051), --token for bearer auth.
"""
import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    out = tempfile.mkdtemp(prefix="magma-stubs-")
    proto_root = os.path.join(ROOT, "proto")
    subprocess.run(["protoc", f"--proto_path={proto_root}", f"--python_out={out}", f"--grpc_out={out}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    os.path.join(proto_root, "magma/v1/agent.proto")], check=True)
    for d in ("magma", "magma/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    try:
        return importlib.import_module("magma.v1.agent_pb2"), importlib.import_module("magma.v1.agent_pb2_grpc")
    finally:
        # The modules are loaded; the generated files are not needed any more.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)


pb, rpc = load_stubs()


def image(path):
    with open(path, "rb") as f:
        return pb.Image(encoded=f.read())


def connect(args):
    channel = grpc.insecure_channel(args.server, options=[("grpc.keepalive_time_ms", 10000)])
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    return rpc.AgentServiceStub(channel), metadata


def cmd_info(stub, md, args):
    print(stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md))


def cmd_generate(stub, md, args):
    req = pb.GenerateRequest(prompt=" ".join(args.text), max_tokens=args.max_tokens,
                             images=[image(p) for p in args.image or []])
    if args.stream:
        for msg in stub.GenerateStream(req, metadata=md):
            print(msg.text_delta, end="", flush=True)
            if msg.finish_reason:
                print(f"\n[{pb.FinishReason.Name(msg.finish_reason)}, {msg.timings.output_tokens} tokens, "
                      f"{msg.timings.total_ms:.0f} ms]")
    else:
        resp = stub.Generate(req, metadata=md)
        print(resp.text)
        print(f"[{pb.FinishReason.Name(resp.finish_reason)}, {resp.timings.total_ms:.0f} ms]")


def cmd_chat(stub, md, args):
    history = []
    print("chat with magma-serve; an empty line ends it")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line:
            break
        history.append(pb.ChatMessage(role="user", content=line))
        answer = ""
        for msg in stub.GenerateStream(pb.GenerateRequest(messages=history, max_tokens=args.max_tokens), metadata=md):
            print(msg.text_delta, end="", flush=True)
            answer += msg.text_delta
        print()
        history.append(pb.ChatMessage(role="assistant", content=answer))


def load_boxes(path):
    # A JSON list of [x1, y1, x2, y2] element boxes in screenshot pixels.
    if not path:
        return []
    with open(path) as f:
        return [pb.UiElement(box=pb.BoxPx(x1=b[0], y1=b[1], x2=b[2], y2=b[3])) for b in json.load(f)]


def click_once(stub, md, shot, instruction, som_out=None, elements=()):
    resp = stub.Click(pb.ClickRequest(screenshot=shot, instruction=instruction, elements=list(elements),
                                      return_som_image=bool(som_out)), metadata=md)
    if som_out:
        with open(som_out, "wb") as f:
            f.write(resp.som_image_png)
    if resp.found:
        print(f"{instruction!r}: click ({resp.click_px.x:.0f}, {resp.click_px.y:.0f}) px, mark {resp.mark}, "
              f"rule {pb.AnswerRule.Name(resp.rule)}, answer {resp.raw_text!r}, {resp.timings.total_ms:.0f} ms")
    else:
        print(f"{instruction!r}: no element found in {resp.raw_text!r}")
    return resp


def cmd_click(stub, md, args):
    click_once(stub, md, image(args.image), " ".join(args.text), args.som_out, load_boxes(args.boxes))


def cmd_ui_loop(stub, md, args):
    # A UI agent asks about the same screenshot several times; the server's
    # vision cache makes the later calls cheap.
    shot = image(args.image)
    elements = load_boxes(args.boxes)
    for instruction in args.text:
        click_once(stub, md, shot, instruction, elements=elements)


def act_once(stub, md, img, instruction, key):
    resp = stub.Act(pb.ActRequest(image=img, instruction=instruction, unnorm_key=key), metadata=md)
    print("action", [round(a, 4) for a in resp.action], "gripper", round(resp.gripper, 3),
          f"({(resp.completed_unix_ns - resp.received_unix_ns) / 1e6:.0f} ms)")
    return resp


def cmd_act(stub, md, args):
    act_once(stub, md, image(args.image), " ".join(args.text), args.unnorm_key)


def cmd_robot_loop(stub, md, args):
    # A controller at a fixed rate: one Act per camera frame (here the same file).
    period = 1.0 / args.hz
    for _ in range(args.steps):
        t0 = time.time()
        act_once(stub, md, image(args.image), " ".join(args.text), args.unnorm_key)
        time.sleep(max(0.0, period - (time.time() - t0)))


def cmd_trace(stub, md, args):
    fmt = pb.HAMSTER_PATH if args.format == "path" else pb.MAGMA_TOM
    resp = stub.Trace(pb.TraceRequest(image=image(args.image), instruction=" ".join(args.text), format=fmt,
                                      steps=args.steps, return_overlay=bool(args.overlay_out)), metadata=md)
    print(resp.raw_text)
    if resp.finish_reason == pb.LENGTH:
        print("(the token budget cut the answer: complete traces only)")
    if resp.parse_error:
        print("could not read the answer:", resp.parse_error)
    elif fmt == pb.MAGMA_TOM and not resp.traces:
        print("no mark moves")
    for t in resp.traces:
        print(f"mark {t.mark}:", [(round(p.px.x), round(p.px.y)) for p in t.future])
    for p in resp.path:
        print(f"({p.px.x:.0f}, {p.px.y:.0f}) {'open' if p.gripper_open else 'closed'}")
    if args.overlay_out:
        with open(args.overlay_out, "wb") as f:
            f.write(resp.overlay_png)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--token", default="")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    g = sub.add_parser("generate")
    g.add_argument("text", nargs="+")
    g.add_argument("--image", action="append")
    g.add_argument("--stream", action="store_true")
    g.add_argument("--max-tokens", type=int, default=128)
    c = sub.add_parser("chat")
    c.add_argument("--max-tokens", type=int, default=256)
    for name in ("click", "ui-loop"):
        p = sub.add_parser(name)
        p.add_argument("text", nargs="+")
        p.add_argument("--image", required=True)
        p.add_argument("--som-out")
        p.add_argument("--boxes", help="JSON list of [x1, y1, x2, y2] element boxes (default: the server proposes them)")
    for name in ("act", "robot-loop"):
        p = sub.add_parser(name)
        p.add_argument("text", nargs="+")
        p.add_argument("--image", required=True)
        p.add_argument("--unnorm-key", default="")
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--hz", type=float, default=2.0)
    t = sub.add_parser("trace")
    t.add_argument("text", nargs="+")
    t.add_argument("--image", required=True)
    t.add_argument("--format", choices=["tom", "path"], default="tom")
    t.add_argument("--steps", type=int, default=0, help="future points per mark (tom; default: the server's, 16)")
    t.add_argument("--overlay-out")
    args = ap.parse_args()
    stub, md = connect(args)
    handlers = {"info": cmd_info, "generate": cmd_generate, "chat": cmd_chat, "click": cmd_click,
                "ui-loop": cmd_ui_loop, "act": cmd_act, "robot-loop": cmd_robot_loop, "trace": cmd_trace}
    try:
        handlers[args.cmd](stub, md, args)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
