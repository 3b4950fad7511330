"""The studio's Music video (Bend tab): an uploaded track renders the session's recipe in the
long-job lane, scripted through gradio_client against a real server on a tiny model."""

from __future__ import annotations

import pytest

from engine.base import audio
from tests.helpers.audio_tracks import tone_track, write_wav
from tests.helpers.browser import studio_server, tiny_model_file

gradio_client = pytest.importorskip("gradio_client")


def test_an_uploaded_track_becomes_a_music_video_with_its_audio(tmp_path):
    import ssl

    from gradio_client import Client, handle_file

    samples, _ = tone_track(2.0, audio.SAMPLE_RATE)
    track = write_wav(tmp_path / "song.wav", samples, audio.SAMPLE_RATE)
    model = tiny_model_file(tmp_path)
    with studio_server(model, env={"STUDIO_OUTPUT_DIR": str(tmp_path / "out"),
                                   "STUDIO_MAX_MUSIC_VIDEO_FRAMES": "12"}) as url:
        # gradio_client gives uploads and downloads 20 s, which a loaded machine (load 15
        # on 2 cores) once exceeded here: a patient client.
        client = Client(url, verbose=False, ssl_verify=ssl.create_default_context(),
                        httpx_kwargs={"timeout": 180})
        client.predict(model, api_name="/load_model")
        video = client.predict(handle_file(str(track)), 0.5, 1.0, 6, "0",
                               api_name="/render_music_video")
        path = video["video"] if isinstance(video, dict) else video
        from engine.base.video import read_video_frames

        assert sum(1 for _ in read_video_frames(path)) == 6  # 1 s at 6 fps
        assert audio.decode(path).duration == pytest.approx(1.0, abs=0.03)
        # Over the frame limit, or without a track: one sentence each, and the server lives.
        with pytest.raises(Exception, match="more than the limit of 12 "
                                            r"\(STUDIO_MAX_MUSIC_VIDEO_FRAMES\)"):
            client.predict(handle_file(str(track)), 0, 2.0, 24, "0",
                           api_name="/render_music_video")
        with pytest.raises(Exception, match="upload an audio track first"):
            client.predict(None, 0, 1.0, 6, "0", api_name="/render_music_video")
        (tmp_path / "notes.wav").write_text("not a song")
        with pytest.raises(Exception, match="not an audio file this studio can read"):
            client.predict(handle_file(str(tmp_path / "notes.wav")), 0, 1.0, 6, "0",
                           api_name="/render_music_video")
        assert client.predict(handle_file(str(track)), 0, 0.5, 4, "0",
                              api_name="/render_music_video")


@pytest.mark.parametrize("seconds, fps", [(float("nan"), 24), (float("inf"), 24), (-1, 24),
                                          (1e300, 1e300), (10, float("nan")), (1e6, 24)])
def test_the_length_must_be_a_finite_number_of_frames(seconds, fps):
    from engine.base.errors import StudioError
    from studio.tabs.music import frames_for

    with pytest.raises(StudioError, match=r"length|fps|limit"):
        frames_for(seconds, fps)
    assert frames_for(2.0, 12) == 24
