package demo;

import java.util.List;

public class Outer {
    public static final int MAX = 10;
    private static int counter = 0;
    static final String A = "a", B = "b";

    public Outer() {}

    void run() {
        class Local {}
    }

    static class Inner {
        int get() { return 1; }
    }

    enum Mode { ON, OFF; void flip() {} }
}

interface Shape {
    int SIDES = 0;
    double area();
}

record Pair(int a, int b) {
    Pair {
    }
}

@interface Marker {}
