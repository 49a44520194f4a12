//! The bench's safe power state, restored whatever happens.
//!
//! Every hardware power driver registers a synchronous action that drives
//! its channel to the bench's safe state. The runner restores the safe state
//! through the normal async path at start and after teardown (also after
//! Ctrl-C/SIGTERM); [`install_panic_hook`] makes a panic do it too, before
//! the process unwinds, because a panic skips every teardown.

use std::sync::{Mutex, Once};

type Action = Box<dyn Fn() + Send + Sync>;

static ACTIONS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);
static HOOK: Once = Once::new();

/// Removes its action when dropped (the driver is gone).
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        ACTIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// Registers `action` to run on [`restore_all`] and on panic.
pub fn register(action: impl Fn() + Send + Sync + 'static) -> Registration {
    let id = {
        let mut n = NEXT.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        *n
    };
    ACTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, Box::new(action)));
    Registration(id)
}

/// Drives every registered channel to its safe state now.
pub fn restore_all() {
    // try_lock: a panic while the registry is locked must not deadlock.
    if let Ok(actions) = ACTIONS.try_lock() {
        for (_, a) in actions.iter() {
            a();
        }
    }
}

/// Chains a panic hook that restores the safe state first.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_all();
            previous(info);
        }));
    });
}
