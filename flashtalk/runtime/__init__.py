"""Runtime: ONE engine for offline and streaming. The backend interface and its two backends (`backends`),
the engine (`engine`), the live sessions and their scheduler (`session`, `scheduler`), the finish step shared
by both (`finish`), the offline writer (`offline`), CUDA graphs (`graphs`, `graphed_renderer`)."""
