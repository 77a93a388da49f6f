"""A real A1111 client, unchanged, against a running `kairos serve`.

PyPI's `webuiapi` (the most used Python client of AUTOMATIC1111's API) drives txt2img, img2img,
progress, interrupt, samplers, schedulers, models, options and png-info. Run by `.ci/run`:

    python tools/clients/webuiapi_test.py --port 7860 [--user u --password p]

against a server on the tiny SD1 test model (hints --norm-num-groups 4 --clip-head-dim 8).
Prints one line per check and `N passed, N failed`; exits 1 on any failure.
"""

import argparse
import sys
import threading
import time

import webuiapi
from PIL import Image

results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}")
    except Exception as e:  # report and go on: one line per check
        results.append((name, e))
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    api = webuiapi.WebUIApi(host=args.host, port=args.port, sampler="Euler a", steps=4)
    if args.user:
        api.set_auth(args.user, args.password)
    small = dict(width=32, height=24, cfg_scale=7)

    def samplers():
        names = [s["name"] for s in api.get_samplers()]
        assert "Euler a" in names and "DPM++ 2M" in names, names

    def schedulers():
        names = api.util_get_scheduler_names()
        assert "karras" in names and "automatic" in names, names

    def models():
        titles = api.util_get_model_names()
        assert any(t.startswith("sd1_tiny") for t in titles), titles
        api.util_set_model("sd1_tiny")
        assert api.util_get_current_model().startswith("sd1_tiny"), api.util_get_current_model()

    def options():
        opts = api.get_options()
        assert "sd_model_checkpoint" in opts
        api.set_options({"CLIP_stop_at_last_layers": 1, "randn_source": "CPU"})
        assert api.get_options()["randn_source"] == "CPU"

    state = {}

    def txt2img():
        r = api.txt2img(prompt="a red cube", negative_prompt="blurry", seed=42, sampler_name="DPM++ 2M",
                        scheduler="Karras", **small)
        assert len(r.images) == 1 and r.images[0].size == (32, 24), r.images
        assert r.info["seed"] == 42 and r.info["all_seeds"] == [42], r.info
        assert "Sampler: DPM++ 2M, Schedule type: Karras" in r.info["infotexts"][0], r.info["infotexts"][0]
        state["image"], state["infotext"] = r.image, r.info["infotexts"][0]
        again = api.txt2img(prompt="a red cube", negative_prompt="blurry", seed=42, sampler_name="DPM++ 2M",
                            scheduler="Karras", **small)
        assert again.image.tobytes() == r.image.tobytes(), "same seed, same image"
        batch = api.txt2img(prompt="a red cube", seed=7, batch_size=2, n_iter=2, **small)
        assert batch.info["all_seeds"] == [7, 8, 9, 10], batch.info["all_seeds"]

    def img2img():
        init = state.get("image") or Image.new("RGB", (32, 24), (200, 40, 40))
        r = api.img2img(images=[init], prompt="a blue cube", seed=3, denoising_strength=0.5, **small)
        assert len(r.images) == 1 and r.images[0].size == (32, 24)
        assert "Denoising strength: 0.5" in r.info["infotexts"][0], r.info["infotexts"][0]

    def png_info():
        r = api.png_info(state["image"])
        assert r.info == state["infotext"], (r.info, state["infotext"])
        assert r.parameters["Seed"] == "42", r.parameters

    def progress_and_interrupt():
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(prompt="long", steps=400, seed=1, **small)))
        t.start()
        deadline = time.time() + 60
        seen = None
        while time.time() < deadline:
            p = api.get_progress()
            if p["state"]["sampling_step"] > 1 and p["current_image"]:
                seen = p
                break
            time.sleep(0.05)
        assert seen, "no progress with a preview"
        assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0, seen
        api.interrupt()
        t.join(60)
        assert not t.is_alive(), "interrupt did not end the job"
        assert api.get_progress()["state"]["interrupted"] is True

    check("samplers", samplers)
    check("schedulers", schedulers)
    check("models", models)
    check("options", options)
    check("txt2img", txt2img)
    check("img2img", img2img)
    check("png-info", png_info)
    check("progress + interrupt", progress_and_interrupt)
    failed = sum(1 for _, e in results if e)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
