pub const LIMIT: usize = 3;
static mut COUNTER: u32 = 0;

pub struct Point<T> {
    x: T,
}

enum Shape {
    Circle,
}

union Bits {
    i: u32,
}

type Id = u64;

pub trait Area {
    type Unit;
    fn area(&self) -> f64;
    fn name(&self) -> String {
        String::new()
    }
}

impl<T> Point<T> {
    pub fn new(x: T) -> Self {
        Point { x }
    }
    const ORIGIN: u8 = 0;
}

impl Area for crate::shapes::Shape {
    type Unit = f64;
    fn area(&self) -> f64 {
        fn helper() {}
        0.0
    }
}

mod inner {
    pub fn nested() {}
}

fn main() {}

macro_rules! m {
    () => {};
}
