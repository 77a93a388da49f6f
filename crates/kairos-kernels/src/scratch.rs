//! Reusable scratch buffers for the kernels.

/// A buffer of `len` f32 taken from a pool kept between calls and returned to it on drop: fresh
/// multi-MB allocations cost about as much in page faults (or, once the allocator reuses memory,
/// in zeroing) as the work done in them. Its
/// contents are left over from earlier calls (every user overwrites what it reads). The pool
/// keeps at most [`Scratch::KEEP`] buffers (the Winograd kernel's three plus one).
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

impl Scratch {
    const KEEP: usize = 4;

    /// A buffer of at least `len` elements, of which the first `len` are visible.
    pub(crate) fn take(len: usize) -> Self {
        let mut buf = {
            // A poisoned pool only means another call panicked while holding it; its buffers are fine.
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            match pool.iter().position(|b| b.len() >= len) {
                Some(i) => pool.swap_remove(i),
                None => Vec::new(),
            }
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < Self::KEEP {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}
